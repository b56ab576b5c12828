//! `/api/v1/sources`: where events come from. Handlers parse the request, call
//! [`crate::service::sources`] and shape the answer.

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::error::{ApiResult, Body, ErrorBody, parse_json};
use super::{AppState, Page, page_after};
use crate::domain::{RateLimit, Scope, rfc3339};
use crate::ingest::{AuthSpec, Format, Mapping};
use crate::model::Source;
use crate::service::sources::{SourceIn, SourcePatch};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(show, update, remove))
}

/// A source as the API shows it. `secret` (and an `ingest_url` carrying a token) only in the
/// reply to a create.
#[derive(Debug, Serialize, ToSchema)]
struct SourceOut {
    id: String,
    name: String,
    format: Format,
    auth: AuthSpec,
    ip_allowlist: Vec<String>,
    dedupe_field: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mapping: Option<Mapping>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rate_limit: Option<RateLimit>,
    ingest_url: String,
    created_at: String,
    updated_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<String>,
}

impl SourceOut {
    fn from(s: &Source, base: &str) -> Self {
        Self {
            id: s.id.clone(),
            name: s.name.clone(),
            format: s.spec.format,
            auth: s.spec.auth.clone(),
            ip_allowlist: s.spec.ip_allowlist.iter().map(|n| n.to_string()).collect(),
            dedupe_field: s.spec.dedupe_field.clone(),
            mapping: s.spec.mapping.clone(),
            rate_limit: s.spec.rate_limit,
            ingest_url: format!("{base}/in/{}", s.name),
            created_at: rfc3339(s.created_at),
            updated_at: rfc3339(s.updated_at),
            secret: None,
        }
    }
}

#[utoipa::path(post, path = "/sources", tag = "sources", request_body = SourceIn,
    responses((status = 201, description = "Created; `secret` and a token-bearing `ingest_url` are shown this once", body = SourceOut),
        (status = 409, description = "The name is taken", body = ErrorBody)))]
async fn create(
    State(app): State<AppState>,
    scope: Scope,
    Body(body): Body,
) -> ApiResult<(StatusCode, Json<SourceOut>)> {
    let input: SourceIn = parse_json(&body)?;
    let source = app.services.create_source(scope, input).await?;
    let mut out = SourceOut::from(&source, &app.public_url());
    if let (AuthSpec::Token { .. }, Some(token)) = (&source.spec.auth, &source.secret) {
        out.ingest_url = format!("{}/{token}", out.ingest_url);
    }
    out.secret = source.secret;
    Ok((StatusCode::CREATED, Json(out)))
}

/// Filters of the source list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u32>,
    cursor: Option<String>,
    format: Option<Format>,
}

#[utoipa::path(get, path = "/sources", tag = "sources", params(ListQuery),
    responses((status = 200, body = Page<SourceOut>)))]
async fn list(
    State(app): State<AppState>,
    scope: Scope,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<Page<SourceOut>>> {
    let q: ListQuery = super::error::parse_query(q.as_deref())?;
    let base = app.public_url();
    let sources = app.services.sources(scope, q.format);
    let page = page_after(
        sources,
        q.limit,
        q.cursor,
        |s| s.id.clone(),
        |s| SourceOut::from(&s, &base),
    )?;
    Ok(Json(page))
}

#[utoipa::path(get, path = "/sources/{id}", tag = "sources", params(("id" = String, Path, description = "Source id or name")),
    responses((status = 200, body = SourceOut)))]
async fn show(
    State(app): State<AppState>,
    scope: Scope,
    Path(id): Path<String>,
) -> ApiResult<Json<SourceOut>> {
    let source = app.services.source(scope, &id)?;
    Ok(Json(SourceOut::from(&source, &app.public_url())))
}

#[utoipa::path(patch, path = "/sources/{id}", tag = "sources", params(("id" = String, Path, description = "Source id or name")),
    request_body = SourcePatch,
    responses((status = 200, body = SourceOut), (status = 409, description = "The name is taken", body = ErrorBody)))]
async fn update(
    State(app): State<AppState>,
    scope: Scope,
    Path(id): Path<String>,
    Body(body): Body,
) -> ApiResult<Json<SourceOut>> {
    let patch: SourcePatch = parse_json(&body)?;
    let s = app.services.update_source(scope, &id, patch).await?;
    Ok(Json(SourceOut::from(&s, &app.public_url())))
}

#[utoipa::path(delete, path = "/sources/{id}", tag = "sources", params(("id" = String, Path, description = "Source id or name")),
    responses((status = 204, description = "Deleted")))]
async fn remove(
    State(app): State<AppState>,
    scope: Scope,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    app.services.delete_source(scope, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
