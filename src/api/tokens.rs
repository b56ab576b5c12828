//! `/api/v1/tokens`: the API tokens, named, `admin` or `read_only`, stored hashed.

use crate::api::error::Body;
use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::error::{ApiError, ApiResult, ErrorBody, FieldError, parse_json, parse_query};
use super::{AppState, Page, page_after, token_hash};
use crate::domain::{self, prefix, rfc3339};
use crate::model::{ApiToken, TokenScope};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(revoke))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct TokenIn {
    #[schema(min_length = 1, max_length = 100, pattern = r"\S")]
    name: String,
    scope: TokenScope,
}

/// A token as the API shows it; the token itself only in the reply to a create.
#[derive(Debug, Serialize, ToSchema)]
struct TokenOut {
    id: String,
    name: String,
    scope: TokenScope,
    created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<String>,
}

impl TokenOut {
    fn from(t: &ApiToken) -> Self {
        Self {
            id: t.id.clone(),
            name: t.name.clone(),
            scope: t.scope,
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
    Body(body): Body,
) -> ApiResult<(StatusCode, Json<TokenOut>)> {
    let input: TokenIn = parse_json(&body)?;
    let name = input.name.trim().to_owned();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(ApiError::validation(vec![FieldError::new(
            "name",
            "1 to 100 characters",
        )]));
    }
    let secret = domain::new_token("thk_");
    let token = ApiToken {
        id: domain::new_id(prefix::TOKEN),
        name,
        hash: token_hash(&secret),
        scope: input.scope,
        created_at: domain::now_ms(),
    };
    app.store.insert_token(token.clone()).await?;
    app.registry.reload().await?;
    tracing::info!(token = %token.id, scope = ?token.scope, "API token created");
    let mut out = TokenOut::from(&token);
    out.token = Some(secret);
    Ok((StatusCode::CREATED, Json(out)))
}

#[utoipa::path(get, path = "/tokens", tag = "tokens", params(ListQuery),
    responses((status = 200, body = Page<TokenOut>)))]
async fn list(
    State(app): State<AppState>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<Page<TokenOut>>> {
    let q: ListQuery = parse_query(q.as_deref())?;
    let mut tokens = app.store.list_tokens().await?;
    tokens.retain(|t| q.scope.is_none_or(|s| t.scope == s));
    tokens.sort_by(|a, b| a.id.cmp(&b.id));
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
async fn revoke(State(app): State<AppState>, Path(id): Path<String>) -> ApiResult<StatusCode> {
    let tokens = app.store.list_tokens().await?;
    let Some(token) = tokens.iter().find(|t| t.id == id) else {
        return Err(ApiError::not_found("token", &id));
    };
    let admins = tokens
        .iter()
        .filter(|t| t.scope == TokenScope::Admin)
        .count();
    if token.scope == TokenScope::Admin && admins == 1 {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "last_admin_token",
            "this is the last admin token: create another before revoking it",
        ));
    }
    app.store.delete_token(&id).await?;
    app.registry.reload().await?;
    tracing::info!(token = %id, "API token revoked");
    Ok(StatusCode::NO_CONTENT)
}
