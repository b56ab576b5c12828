//! `/api/v1/events`: the publisher API, and the log of stored events.

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::deliveries::DeliveryOut;
use super::error::{ApiError, ApiResult, FieldError, parse_json, parse_query};
use super::{AppState, Page, page_limit, paginate, query_time};
use crate::domain::{EventType, rfc3339};
use crate::ingest::submit::{API_SOURCE, Receipt, Submission};
use crate::store::{DeliveryFilter, EventFilter, StoredEvent};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/events", get(list).post(publish))
        .route("/events/{id}", get(show))
        .route("/events/{id}/replay", post(replay))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishIn {
    #[serde(rename = "type")]
    event_type: EventType,
    #[serde(default = "empty_object")]
    data: Value,
}

fn empty_object() -> Value {
    Value::Object(Default::default())
}

/// Publishes an event: answered 202 once it and its deliveries are on disk.
async fn publish(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Receipt>)> {
    let _slot = app.inbound.slot()?;
    let input: PublishIn = parse_json(&body)?;
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
            dedupe_key,
            // The canonical event holds everything this body said.
            raw: Bytes::new(),
        })
        .await?;
    Ok((StatusCode::ACCEPTED, Json(receipt)))
}

/// An event as the API shows it.
#[derive(Debug, Serialize)]
pub struct EventOut {
    id: String,
    #[serde(rename = "type")]
    event_type: String,
    source: String,
    dedupe_key: String,
    created_at: String,
    data: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    deliveries: Option<Vec<DeliveryOut>>,
}

impl EventOut {
    fn from(e: StoredEvent) -> Self {
        let data = serde_json::from_str::<Value>(&e.body)
            .ok()
            .and_then(|mut v| v.get_mut("data").map(Value::take))
            .unwrap_or(Value::Null);
        Self {
            id: e.id,
            event_type: e.event_type,
            source: e.source,
            dedupe_key: e.dedupe_key,
            created_at: rfc3339(e.created_at),
            data,
            deliveries: None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    #[serde(rename = "type")]
    event_type: Option<String>,
    source: Option<String>,
    since: Option<String>,
    until: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
}

/// Events, newest first.
async fn list(
    State(app): State<AppState>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<Page<EventOut>>> {
    let q: ListQuery = parse_query(q.as_deref())?;
    let limit = page_limit(q.limit)?;
    let source = q.source.map(|s| match app.registry.source(&s) {
        Some(found) => found.id.clone(),
        None => s,
    });
    let rows = app
        .store
        .list_events(EventFilter {
            event_type: q.event_type,
            source,
            since: query_time("since", q.since.as_deref())?,
            until: query_time("until", q.until.as_deref())?,
            before: q.cursor,
            limit: limit + 1,
        })
        .await?;
    Ok(Json(paginate(
        rows,
        limit,
        |e| e.id.clone(),
        EventOut::from,
    )))
}

async fn show(State(app): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<EventOut>> {
    let event = app
        .store
        .get_event(&id)
        .await?
        .ok_or_else(|| ApiError::not_found("event", &id))?;
    let deliveries = app
        .store
        .list_deliveries(DeliveryFilter {
            event_id: Some(id),
            limit: 1000,
            ..Default::default()
        })
        .await?;
    let mut out = EventOut::from(event);
    out.deliveries = Some(deliveries.into_iter().map(DeliveryOut::from).collect());
    Ok(Json(out))
}

#[derive(Serialize)]
struct ReplayOut {
    event_id: String,
    deliveries: Vec<String>,
}

/// Sends a stored event again to every endpoint subscribed to its type now.
async fn replay(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<ReplayOut>)> {
    let event = app
        .store
        .get_event(&id)
        .await?
        .ok_or_else(|| ApiError::not_found("event", &id))?;
    let deliveries = app.ingestor.replay(&event).await?;
    tracing::info!(event = %id, deliveries = deliveries.len(), "event replayed");
    Ok((
        StatusCode::ACCEPTED,
        Json(ReplayOut {
            event_id: id,
            deliveries,
        }),
    ))
}
