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
        .routes(routes!(portal_access))
        .routes(routes!(expire_portal_access))
}

/// The route a portal link is opened with; it needs no token, the link is one.
pub fn portal_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(open_portal_session))
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

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct PortalAccessIn {
    /// Seconds the link may be opened in: 60 to 604800 (a week); an hour if left out.
    #[schema(minimum = 60, maximum = 604800)]
    expiry: Option<f64>,
    /// The portal it opens may only read.
    #[serde(default)]
    read_only: bool,
}

/// A one-time link into an application's portal.
#[derive(Debug, Serialize, ToSchema)]
struct PortalAccessOut {
    /// The link to hand to the customer; it works once.
    url: String,
    /// The link's token (also in `url`), shown this once.
    token: String,
    expires_at: String,
    read_only: bool,
}

/// Makes a one-time link into the application's customer portal. Opening it
/// (`POST /portal/sessions`) gives a session key of this application for eight hours.
#[utoipa::path(post, path = "/applications/{app}/portal-access", tag = "applications",
    params(("app" = String, Path, description = "Application id or uid")),
    request_body = PortalAccessIn,
    responses((status = 201, description = "Made; the link is shown this once", body = PortalAccessOut)))]
async fn portal_access(
    State(app): State<AppState>,
    scope: Scope,
    Path(id): Path<String>,
    Body(body): Body,
) -> ApiResult<(StatusCode, Json<PortalAccessOut>)> {
    let input: PortalAccessIn = parse_json(&body)?;
    let (link, token) = app
        .services
        .portal_link(scope, &id, input.expiry, input.read_only)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(PortalAccessOut {
            url: format!("{}/portal#token={token}", app.public_url()),
            token,
            expires_at: rfc3339(link.expires_at),
            read_only: link.read_only,
        }),
    ))
}

#[derive(Debug, Serialize, ToSchema)]
struct ExpiredOut {
    /// Links and sessions that stopped working.
    expired: u64,
}

/// Revokes every portal link of the application and ends every session opened with one.
#[utoipa::path(post, path = "/applications/{app}/portal-access/expire-all", tag = "applications",
    params(("app" = String, Path, description = "Application id or uid")),
    responses((status = 200, body = ExpiredOut)))]
async fn expire_portal_access(
    State(app): State<AppState>,
    scope: Scope,
    Path(id): Path<String>,
) -> ApiResult<Json<ExpiredOut>> {
    let expired = app.services.expire_portal_access(scope, &id).await?;
    Ok(Json(ExpiredOut { expired }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct SessionIn {
    /// The token of a portal link (`ptl_…`).
    token: String,
}

/// A portal session: a key of one application that stops working at `expires_at`.
#[derive(Debug, Serialize, ToSchema)]
struct SessionOut {
    /// The session's API key: send it as `Authorization: Bearer`.
    token: String,
    application_id: String,
    read_only: bool,
    expires_at: String,
}

/// Opens a portal link, once: answers a session key of its application.
#[utoipa::path(post, path = "/portal/sessions", tag = "applications", security(()),
    request_body = SessionIn,
    responses((status = 201, description = "Opened", body = SessionOut),
        (status = 400, description = "The body is not valid JSON", body = ErrorBody),
        (status = 409, description = "The link was used, expired or revoked", body = ErrorBody),
        (status = 422, description = "Invalid input", body = ErrorBody)))]
async fn open_portal_session(
    State(app): State<AppState>,
    Body(body): Body,
) -> ApiResult<(StatusCode, Json<SessionOut>)> {
    let input: SessionIn = parse_json(&body)?;
    let (session, key) = app.services.open_portal_session(&input.token).await?;
    Ok((
        StatusCode::CREATED,
        Json(SessionOut {
            token: key,
            application_id: session.application_id.unwrap_or_default(),
            read_only: session.scope == crate::model::TokenScope::ReadOnly,
            expires_at: session.expires_at.map(rfc3339).unwrap_or_default(),
        }),
    ))
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
