//! `/api/v1/events`: the publisher API, and the log of stored events.

use crate::api::error::Body;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::deliveries::DeliveryOut;
use super::error::{ApiError, ApiResult, FieldError, parse_json, parse_query};
use super::{AppState, Page, page_limit, paginate, query_time};
use crate::domain::{EventType, Scope, rfc3339};
use crate::ingest::submit::{API_SOURCE, Receipt, Submission};
use crate::model::{EventFilter, Labels, StoredEvent};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, publish))
        .routes(routes!(show))
        .routes(routes!(replay))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct PublishIn {
    /// A canonical event type (`entry`, `exit_fill`, …) or a custom one (`my.signal`).
    #[serde(rename = "type")]
    #[schema(value_type = String, pattern = r"^[A-Za-z0-9_.:/-]{1,64}$", example = "entry")]
    event_type: EventType,
    #[serde(default = "empty_object")]
    data: Value,
    /// What the event is about, matched against endpoints' label filters:
    /// `{"wallet": "DRVR…", "strategy": "sma-cross"}`. `source`, `pair` and `strategy` are
    /// also taken from the event itself; given here, they win.
    #[serde(default)]
    labels: Labels,
}

fn empty_object() -> Value {
    Value::Object(Default::default())
}

/// Publishes an event: answered 202 once it and its deliveries are on disk.
#[utoipa::path(post, path = "/events", tag = "events", request_body = PublishIn,
    params(("Idempotency-Key" = Option<String>, Header, description = "Dedupe key (default: a hash of the body)")),
    responses((status = 202, description = "Stored with its deliveries (or a duplicate of a stored event)", body = Receipt)))]
async fn publish(
    State(app): State<AppState>,
    headers: HeaderMap,
    Body(body): Body,
) -> ApiResult<(StatusCode, Json<Receipt>)> {
    let _slot = app.inbound.slot()?;
    let input: PublishIn = parse_json(&body)?;
    crate::domain::exact_integers(&body).map_err(ApiError::bad_request)?;
    let mut errors = Vec::new();
    crate::model::labels::check(&input.labels, &mut errors);
    if !errors.is_empty() {
        return Err(ApiError::validation(errors));
    }
    let dedupe_key = match headers.get("idempotency-key") {
        Some(v) => {
            let key = v.to_str().map(str::trim).unwrap_or_default();
            if key.is_empty() || key.len() > 256 {
                return Err(ApiError::validation(vec![FieldError::new(
                    "Idempotency-Key",
                    "must be 1 to 256 visible ASCII characters",
                )]));
            }
            key.to_owned()
        }
        None => crate::ingest::body_hash_key(&body),
    };
    let receipt = app
        .ingestor
        .submit(Submission {
            source_id: API_SOURCE.into(),
            source_name: API_SOURCE.into(),
            event_type: input.event_type,
            data: input.data,
            labels: input.labels,
            dedupe_key,
            // The canonical event holds everything this body said.
            raw: Bytes::new(),
        })
        .await?;
    Ok((StatusCode::ACCEPTED, Json(receipt)))
}

/// An event as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventOut {
    id: String,
    #[serde(rename = "type")]
    event_type: String,
    source: String,
    dedupe_key: String,
    created_at: String,
    data: Value,
    /// The labels endpoints were matched on: the publisher's, with `source`, `pair` and
    /// `strategy` from the event.
    labels: Labels,
    #[serde(skip_serializing_if = "Option::is_none")]
    deliveries: Option<Vec<DeliveryOut>>,
}

impl EventOut {
    fn from(e: StoredEvent) -> Self {
        let mut body = serde_json::from_str::<Value>(&e.body).unwrap_or_default();
        let labels = crate::ingest::stored_labels(&body);
        let data = body.get_mut("data").map(Value::take).unwrap_or(Value::Null);
        Self {
            id: e.id,
            event_type: e.event_type,
            source: e.source,
            dedupe_key: e.dedupe_key,
            created_at: rfc3339(e.created_at),
            data,
            labels,
            deliveries: None,
        }
    }
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    #[serde(rename = "type")]
    event_type: Option<String>,
    source: Option<String>,
    /// The pair the event is about, as it carries it (`BTC/USDT`).
    pair: Option<String>,
    /// The key the event was de-duplicated on.
    dedupe_key: Option<String>,
    /// RFC 3339 or Unix seconds.
    #[param(
        pattern = r"^(-?[0-9]{1,12}|[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?([Zz]|[+-][0-9]{2}:[0-9]{2}))$"
    )]
    since: Option<String>,
    /// RFC 3339 or Unix seconds.
    #[param(
        pattern = r"^(-?[0-9]{1,12}|[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?([Zz]|[+-][0-9]{2}:[0-9]{2}))$"
    )]
    until: Option<String>,
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u32>,
    cursor: Option<String>,
}

/// Events, newest first.
#[utoipa::path(get, path = "/events", tag = "events", params(ListQuery),
    responses((status = 200, body = Page<EventOut>)))]
async fn list(
    State(app): State<AppState>,
    scope: Scope,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<Page<EventOut>>> {
    let q: ListQuery = parse_query(q.as_deref())?;
    let limit = page_limit(q.limit)?;
    let rows = app
        .services
        .events(
            scope,
            EventFilter {
                event_type: q.event_type,
                source: q.source,
                pair: q.pair,
                dedupe_key: q.dedupe_key,
                since: query_time("since", q.since.as_deref())?,
                until: query_time("until", q.until.as_deref())?,
                before: q.cursor,
                limit: limit + 1,
            },
        )
        .await?;
    Ok(Json(paginate(
        rows,
        limit,
        |e| e.id.clone(),
        EventOut::from,
    )))
}

#[utoipa::path(get, path = "/events/{id}", tag = "events", params(("id" = String, Path, description = "Event id")),
    responses((status = 200, description = "The event with its deliveries", body = EventOut)))]
async fn show(
    State(app): State<AppState>,
    scope: Scope,
    Path(id): Path<String>,
) -> ApiResult<Json<EventOut>> {
    let (event, deliveries) = app.services.event(scope, &id).await?;
    let mut out = EventOut::from(event);
    out.deliveries = Some(deliveries.into_iter().map(DeliveryOut::from).collect());
    Ok(Json(out))
}

#[derive(Serialize, ToSchema)]
struct ReplayOut {
    event_id: String,
    deliveries: Vec<String>,
}

/// Sends a stored event again to every endpoint subscribed to its type now.
#[utoipa::path(post, path = "/events/{id}/replay", tag = "events", params(("id" = String, Path, description = "Event id")),
    responses((status = 202, description = "New deliveries created", body = ReplayOut)))]
async fn replay(
    State(app): State<AppState>,
    scope: Scope,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<ReplayOut>)> {
    let deliveries = app.services.replay_event(scope, &id).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(ReplayOut {
            event_id: id,
            deliveries,
        }),
    ))
}
