//! `/api/v1/deliveries`: the delivery log, with every attempt, and retries by hand.

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::error::{ApiError, ApiResult, ErrorBody, FieldError, parse_query};
use super::{AppState, Page, page_limit, paginate};
use crate::domain::{Scope, rfc3339};
use crate::model::{Attempt, Delivery, DeliveryFilter, DeliveryStatus};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(show))
        .routes(routes!(retry))
}

/// A delivery as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryOut {
    id: String,
    event_id: String,
    endpoint_id: String,
    status: DeliveryStatus,
    attempt_count: u32,
    next_attempt_at: Option<String>,
    last_status_code: Option<u16>,
    last_error: Option<String>,
    created_at: String,
    updated_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    attempts: Option<Vec<AttemptOut>>,
}

impl DeliveryOut {
    pub fn from(d: Delivery) -> Self {
        Self {
            id: d.id,
            event_id: d.event_id,
            endpoint_id: d.endpoint_id,
            status: d.status,
            attempt_count: d.attempts,
            next_attempt_at: d.next_attempt_at.map(rfc3339),
            last_status_code: d.last_status_code,
            last_error: d.last_error,
            created_at: rfc3339(d.created_at),
            updated_at: rfc3339(d.updated_at),
            attempts: None,
        }
    }
}

/// One attempt as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct AttemptOut {
    #[serde(flatten)]
    attempt: Attempt,
    attempted_at: String,
}

impl AttemptOut {
    pub fn from(attempt: Attempt) -> Self {
        Self {
            attempted_at: rfc3339(attempt.attempted_at),
            attempt,
        }
    }
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    endpoint_id: Option<String>,
    event_id: Option<String>,
    status: Option<String>,
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u32>,
    cursor: Option<String>,
}

/// Deliveries, newest first.
#[utoipa::path(get, path = "/deliveries", tag = "deliveries", params(ListQuery),
    responses((status = 200, body = Page<DeliveryOut>)))]
async fn list(
    State(app): State<AppState>,
    scope: Scope,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<Page<DeliveryOut>>> {
    let q: ListQuery = parse_query(q.as_deref())?;
    let limit = page_limit(q.limit)?;
    let status = q
        .status
        .map(|s| {
            DeliveryStatus::parse(&s).ok_or_else(|| {
                ApiError::validation(vec![FieldError::new(
                    "status",
                    "one of pending, succeeded, failed, cancelled",
                )])
            })
        })
        .transpose()?;
    let rows = app
        .services
        .deliveries(
            scope,
            DeliveryFilter {
                endpoint_id: q.endpoint_id,
                event_id: q.event_id,
                status,
                before: q.cursor,
                limit: limit + 1,
            },
        )
        .await?;
    Ok(Json(paginate(
        rows,
        limit,
        |d| d.id.clone(),
        DeliveryOut::from,
    )))
}

#[utoipa::path(get, path = "/deliveries/{id}", tag = "deliveries", params(("id" = String, Path, description = "Delivery id")),
    responses((status = 200, description = "The delivery with every attempt", body = DeliveryOut)))]
async fn show(
    State(app): State<AppState>,
    scope: Scope,
    Path(id): Path<String>,
) -> ApiResult<Json<DeliveryOut>> {
    let (delivery, attempts) = app.services.delivery(scope, &id).await?;
    let mut out = DeliveryOut::from(delivery);
    out.attempts = Some(attempts.into_iter().map(AttemptOut::from).collect());
    Ok(Json(out))
}

/// Makes a delivery pending again, due now, with a fresh retry schedule.
#[utoipa::path(post, path = "/deliveries/{id}/retry", tag = "deliveries", params(("id" = String, Path, description = "Delivery id")),
    responses((status = 202, description = "Pending again, due now", body = DeliveryOut),
        (status = 409, description = "Its endpoint was deleted", body = ErrorBody)))]
async fn retry(
    State(app): State<AppState>,
    scope: Scope,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<DeliveryOut>)> {
    let updated = app.services.retry_delivery(scope, &id).await?;
    Ok((StatusCode::ACCEPTED, Json(DeliveryOut::from(updated))))
}
