//! `/api/v1/applications`: a provider's customers (provider mode), with their API keys. The
//! operator creates, lists, changes and deletes applications; an application's own key may
//! read its application and manage its keys. Handlers parse, call
//! [`crate::service::applications`] and shape the answer.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::error::{ApiResult, Body, ErrorBody, parse_json, parse_query};
use super::tokens::{TokenIn, TokenOut};
use super::{AppState, Page, page_after};
use crate::domain::{RateLimit, Scope, Signing, rfc3339};
use crate::model::{Application, Quotas};
use crate::service::applications::ApplicationFields;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(show, update, remove))
        .routes(routes!(keys, create_key))
        .routes(routes!(revoke_key))
}

/// An application as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApplicationOut {
    /// `app_…`
    id: String,
    /// The provider's own id for it, usable wherever the id is.
    #[serde(skip_serializing_if = "Option::is_none")]
    uid: Option<String>,
    name: String,
    metadata: BTreeMap<String, String>,
    quotas: Quotas,
    #[serde(skip_serializing_if = "Option::is_none")]
    rate_limit: Option<RateLimit>,
    /// How endpoints made through the subscription API are signed.
    subscription_signing: Signing,
    created_at: String,
    updated_at: String,
}

impl ApplicationOut {
    fn from(a: &Application) -> Self {
        Self {
            id: a.id.clone(),
            uid: a.uid.clone(),
            name: a.name.clone(),
            metadata: a.settings.metadata.clone(),
            quotas: a.settings.quotas,
            rate_limit: a.settings.rate_limit,
            subscription_signing: a.settings.subscription_signing.unwrap_or(Signing::HmacHex),
            created_at: rfc3339(a.created_at),
            updated_at: rfc3339(a.updated_at),
        }
    }
}

/// A page of a list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u32>,
    cursor: Option<String>,
}

#[utoipa::path(post, path = "/applications", tag = "applications", request_body = ApplicationFields,
    responses((status = 201, description = "Created", body = ApplicationOut),
        (status = 409, description = "Another application has this uid", body = ErrorBody)))]
async fn create(
    State(app): State<AppState>,
    scope: Scope,
    Body(body): Body,
) -> ApiResult<(StatusCode, Json<ApplicationOut>)> {
    let input: ApplicationFields = parse_json(&body)?;
    let created = app.services.create_application(scope, input).await?;
    Ok((StatusCode::CREATED, Json(ApplicationOut::from(&created))))
}

#[utoipa::path(get, path = "/applications", tag = "applications", params(ListQuery),
    responses((status = 200, body = Page<ApplicationOut>)))]
async fn list(
    State(app): State<AppState>,
    scope: Scope,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<Page<ApplicationOut>>> {
    let q: ListQuery = parse_query(q.as_deref())?;
    let page = page_after(
        app.services.applications(&scope),
        q.limit,
        q.cursor,
        |a| a.id.clone(),
        |a| ApplicationOut::from(&a),
    )?;
    Ok(Json(page))
}

#[utoipa::path(get, path = "/applications/{app}", tag = "applications",
    params(("app" = String, Path, description = "Application id or uid")),
    responses((status = 200, body = ApplicationOut)))]
async fn show(
    State(app): State<AppState>,
    scope: Scope,
    Path(id): Path<String>,
) -> ApiResult<Json<ApplicationOut>> {
    let found = app.services.application(&scope, &id)?;
    Ok(Json(ApplicationOut::from(&found)))
}

#[utoipa::path(patch, path = "/applications/{app}", tag = "applications",
    params(("app" = String, Path, description = "Application id or uid")),
    request_body = ApplicationFields, responses((status = 200, body = ApplicationOut),
        (status = 409, description = "Another application has this uid", body = ErrorBody)))]
async fn update(
    State(app): State<AppState>,
    scope: Scope,
    Path(id): Path<String>,
    Body(body): Body,
) -> ApiResult<Json<ApplicationOut>> {
    let patch: ApplicationFields = parse_json(&body)?;
    let updated = app.services.update_application(scope, &id, patch).await?;
    Ok(Json(ApplicationOut::from(&updated)))
}

#[utoipa::path(delete, path = "/applications/{app}", tag = "applications",
    params(("app" = String, Path, description = "Application id or uid")),
    responses((status = 204, description = "Deleted, with its endpoints, deliveries, keys and the events only it was sent")))]
async fn remove(
    State(app): State<AppState>,
    scope: Scope,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    app.services.delete_application(scope, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/applications/{app}/keys", tag = "applications",
    params(("app" = String, Path, description = "Application id or uid")),
    request_body = TokenIn,
    responses((status = 201, description = "Created; `token` is shown this once", body = TokenOut)))]
async fn create_key(
    State(app): State<AppState>,
    scope: Scope,
    Path(id): Path<String>,
    Body(body): Body,
) -> ApiResult<(StatusCode, Json<TokenOut>)> {
    let input: TokenIn = parse_json(&body)?;
    let (key, secret) = app
        .services
        .create_application_key(scope, &id, &input.name, input.scope)
        .await?;
    let mut out = TokenOut::from(&key);
    out.token = Some(secret);
    Ok((StatusCode::CREATED, Json(out)))
}

#[utoipa::path(get, path = "/applications/{app}/keys", tag = "applications",
    params(("app" = String, Path, description = "Application id or uid"), ListQuery),
    responses((status = 200, body = Page<TokenOut>)))]
async fn keys(
    State(app): State<AppState>,
    scope: Scope,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<Page<TokenOut>>> {
    let q: ListQuery = parse_query(q.as_deref())?;
    let keys = app.services.application_keys(scope, &id).await?;
    let page = page_after(
        keys,
        q.limit,
        q.cursor,
        |t| t.id.clone(),
        |t| TokenOut::from(&t),
    )?;
    Ok(Json(page))
}

#[utoipa::path(delete, path = "/applications/{app}/keys/{id}", tag = "applications",
    params(("app" = String, Path, description = "Application id or uid"),
           ("id" = String, Path, description = "Key id")),
    responses((status = 204, description = "Revoked")))]
async fn revoke_key(
    State(app): State<AppState>,
    scope: Scope,
    Path((id, key)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    app.services
        .revoke_application_key(scope, &id, &key)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
