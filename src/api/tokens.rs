//! `/api/v1/tokens`: the API tokens, named, `admin` or `read_only`, stored hashed.

use crate::api::error::Body;
use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::error::{ApiResult, ErrorBody, parse_json, parse_query};
use super::{AppState, Page, page_after};
use crate::domain::{Scope, rfc3339};
use crate::model::{ApiToken, TokenScope};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(revoke))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct TokenIn {
    #[schema(min_length = 1, max_length = 100, pattern = r"\S")]
    pub name: String,
    pub scope: TokenScope,
}

/// A token as the API shows it; the token itself only in the reply to a create.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct TokenOut {
    id: String,
    name: String,
    scope: TokenScope,
    /// The application whose key this is; left out for the operator's tokens.
    #[serde(skip_serializing_if = "Option::is_none")]
    application_id: Option<String>,
    /// When it stops working (a portal session); left out for tokens that last until revoked.
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_at: Option<String>,
    created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

impl TokenOut {
    pub fn from(t: &ApiToken) -> Self {
        Self {
            id: t.id.clone(),
            name: t.name.clone(),
            scope: t.scope,
            application_id: t.application_id.clone(),
            expires_at: t.expires_at.map(rfc3339),
            created_at: rfc3339(t.created_at),
            token: None,
        }
    }
}

/// Filters of the token list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u32>,
    cursor: Option<String>,
    scope: Option<TokenScope>,
}

#[utoipa::path(post, path = "/tokens", tag = "tokens", request_body = TokenIn,
    responses((status = 201, description = "Created; `token` is shown this once", body = TokenOut)))]
async fn create(
    State(app): State<AppState>,
    scope: Scope,
    Body(body): Body,
) -> ApiResult<(StatusCode, Json<TokenOut>)> {
    let input: TokenIn = parse_json(&body)?;
    let (token, secret) = app
        .services
        .create_token(scope, &input.name, input.scope)
        .await?;
    let mut out = TokenOut::from(&token);
    out.token = Some(secret);
    Ok((StatusCode::CREATED, Json(out)))
}

#[utoipa::path(get, path = "/tokens", tag = "tokens", params(ListQuery),
    responses((status = 200, body = Page<TokenOut>)))]
async fn list(
    State(app): State<AppState>,
    scope: Scope,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<Page<TokenOut>>> {
    let q: ListQuery = parse_query(q.as_deref())?;
    let tokens = app.services.tokens(scope, q.scope).await?;
    let page = page_after(
        tokens,
        q.limit,
        q.cursor,
        |t| t.id.clone(),
        |t| TokenOut::from(&t),
    )?;
    Ok(Json(page))
}

#[utoipa::path(delete, path = "/tokens/{id}", tag = "tokens", params(("id" = String, Path, description = "Token id")),
    responses((status = 204, description = "Revoked"), (status = 409, description = "The last admin token", body = ErrorBody)))]
async fn revoke(
    State(app): State<AppState>,
    scope: Scope,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    app.services.revoke_token(scope, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
