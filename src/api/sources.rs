//! `/api/v1/sources`: where events come from.

use crate::api::error::Body;
use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::error::{ApiError, ApiResult, ErrorBody, FieldError, parse_json};
use super::{AppState, Page, page_after};
use crate::domain::RateLimit;
use crate::domain::{self, prefix, rfc3339};
use crate::ingest::{AuthSpec, Format, Mapping, SourceSpec};
use crate::model::Source;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(show, update, remove))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct SourceIn {
    /// As it appears in the ingest URL: lowercase letters, digits, `-` and `_` (not `src_…`).
    #[schema(pattern = r"^[a-z0-9][a-z0-9_-]{0,63}$", example = "tradingview")]
    name: String,
    #[serde(default)]
    format: Format,
    /// Default: a token (in the URL, or for TradingView also a `passphrase` body field).
    #[serde(default)]
    auth: Option<AuthSpec>,
    #[serde(default)]
    ip_allowlist: Vec<String>,
    #[serde(default)]
    dedupe_field: Option<String>,
    #[serde(default)]
    mapping: Option<Mapping>,
    /// Requests accepted per window (`10/s`, `60/min`), over all senders.
    #[serde(default)]
    rate_limit: Option<RateLimit>,
    /// A secret of the sender's own; one is generated when absent.
    #[serde(default)]
    secret: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct SourcePatch {
    #[schema(pattern = r"^[a-z0-9][a-z0-9_-]{0,63}$")]
    name: Option<String>,
    format: Option<Format>,
    ip_allowlist: Option<Vec<String>>,
    dedupe_field: Option<String>,
    mapping: Option<Mapping>,
    rate_limit: Option<RateLimit>,
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

/// A source name: lowercase letters, digits, `-` and `_`, starting with a letter or digit, as
/// it appears in the ingest URL.
fn check_name(name: &str, errors: &mut Vec<FieldError>) {
    let ok = (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && !name.starts_with("src_");
    if !ok {
        errors.push(FieldError::new(
            "name",
            "1 to 64 lowercase letters, digits, - or _, starting with a letter or digit (not src_)",
        ));
    }
}

fn parse_allowlist(list: &[String], errors: &mut Vec<FieldError>) -> Vec<ipnet::IpNet> {
    let mut nets = Vec::new();
    for (i, entry) in list.iter().enumerate() {
        if entry.trim().eq_ignore_ascii_case("tradingview") {
            nets.extend(
                crate::ingest::TRADINGVIEW_ADDRESSES
                    .iter()
                    .filter_map(|a| crate::ingest::parse_cidr(a).ok()),
            );
            continue;
        }
        match crate::ingest::parse_cidr(entry) {
            Ok(net) => nets.push(net),
            Err(e) => errors.push(FieldError::new(format!("ip_allowlist[{i}]"), e)),
        }
    }
    nets
}

fn check_auth(auth: &AuthSpec, errors: &mut Vec<FieldError>) {
    match auth {
        AuthSpec::Hmac { header, .. }
            if axum::http::HeaderName::from_bytes(header.as_bytes()).is_err() =>
        {
            errors.push(FieldError::new("auth.header", "not a valid header name"));
        }
        AuthSpec::Token { field: Some(f) } if f.is_empty() => {
            errors.push(FieldError::new("auth.field", "must not be empty"));
        }
        _ => {}
    }
}

/// The authentication a source gets when none is named: a token in the URL, which every
/// sender can use; TradingView may also put it in a `passphrase` field of its alert.
fn default_auth(format: Format) -> AuthSpec {
    AuthSpec::Token {
        field: (format == Format::Tradingview).then(|| "passphrase".to_owned()),
    }
}

fn check_mapping(format: Format, mapping: Option<&Mapping>, errors: &mut Vec<FieldError>) {
    let Some(mapping) = mapping else { return };
    if format != Format::Json {
        errors.push(FieldError::new(
            "mapping",
            "only the json format takes a mapping",
        ));
    } else if let Err((field, message)) = mapping.validate() {
        errors.push(FieldError::new(field, message));
    }
}

/// A new secret fitting the kind of authentication.
fn generate_secret(auth: &AuthSpec) -> Option<String> {
    match auth {
        AuthSpec::None => None,
        AuthSpec::Token { .. } => Some(domain::new_token("")),
        AuthSpec::Hmac { .. } | AuthSpec::StandardWebhooks => Some(domain::new_signing_secret()),
    }
}

#[utoipa::path(post, path = "/sources", tag = "sources", request_body = SourceIn,
    responses((status = 201, description = "Created; `secret` and a token-bearing `ingest_url` are shown this once", body = SourceOut),
        (status = 409, description = "The name is taken", body = ErrorBody)))]
async fn create(
    State(app): State<AppState>,
    Body(body): Body,
) -> ApiResult<(StatusCode, Json<SourceOut>)> {
    let input: SourceIn = parse_json(&body)?;
    let mut errors = Vec::new();
    check_name(&input.name, &mut errors);
    let auth = input.auth.unwrap_or_else(|| default_auth(input.format));
    check_auth(&auth, &mut errors);
    check_mapping(input.format, input.mapping.as_ref(), &mut errors);
    let ip_allowlist = parse_allowlist(&input.ip_allowlist, &mut errors);
    let secret = match (&auth, input.secret) {
        (AuthSpec::None, Some(_)) => {
            errors.push(FieldError::new(
                "secret",
                "a source without auth has no secret",
            ));
            None
        }
        (_, Some(s)) if s.len() < 16 || s.len() > 256 => {
            errors.push(FieldError::new("secret", "must have 16 to 256 characters"));
            None
        }
        (_, Some(s)) => Some(s),
        (auth, None) => generate_secret(auth),
    };
    if !errors.is_empty() {
        return Err(ApiError::validation(errors));
    }
    if app.registry.source(&input.name).is_some() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("a source named {:?} already exists", input.name),
        ));
    }
    let now = domain::now_ms();
    let source = Source {
        id: domain::new_id(prefix::SOURCE),
        name: input.name,
        spec: SourceSpec {
            format: input.format,
            auth,
            ip_allowlist,
            dedupe_field: input.dedupe_field.filter(|f| !f.is_empty()),
            mapping: input.mapping,
            rate_limit: input.rate_limit,
        },
        secret,
        created_at: now,
        updated_at: now,
    };
    app.store.insert_source(source.clone()).await?;
    app.registry.reload().await?;
    tracing::info!(source = %source.id, name = %source.name, "source created");
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
    RawQuery(q): RawQuery,
) -> ApiResult<Json<Page<SourceOut>>> {
    let q: ListQuery = super::error::parse_query(q.as_deref())?;
    let base = app.public_url();
    let sources = app
        .registry
        .sources()
        .into_iter()
        .filter(|s| q.format.is_none_or(|f| s.spec.format == f))
        .collect();
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
async fn show(State(app): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<SourceOut>> {
    let source = app
        .registry
        .source(&id)
        .ok_or_else(|| ApiError::not_found("source", &id))?;
    Ok(Json(SourceOut::from(&source, &app.public_url())))
}

#[utoipa::path(patch, path = "/sources/{id}", tag = "sources", params(("id" = String, Path, description = "Source id or name")),
    request_body = SourcePatch,
    responses((status = 200, body = SourceOut), (status = 409, description = "The name is taken", body = ErrorBody)))]
async fn update(
    State(app): State<AppState>,
    Path(id): Path<String>,
    Body(body): Body,
) -> ApiResult<Json<SourceOut>> {
    let patch: SourcePatch = parse_json(&body)?;
    let current = app
        .registry
        .source(&id)
        .ok_or_else(|| ApiError::not_found("source", &id))?;
    let mut s = (*current).clone();
    let mut errors = Vec::new();
    if let Some(name) = patch.name {
        check_name(&name, &mut errors);
        if name != s.name && app.registry.source(&name).is_some() {
            errors.push(FieldError::new("name", "another source has this name"));
        }
        s.name = name;
    }
    if let Some(f) = patch.format {
        s.spec.format = f;
    }
    if let Some(list) = patch.ip_allowlist {
        s.spec.ip_allowlist = parse_allowlist(&list, &mut errors);
    }
    if let Some(field) = patch.dedupe_field {
        s.spec.dedupe_field = (!field.is_empty()).then_some(field);
    }
    if let Some(mapping) = patch.mapping {
        s.spec.mapping = Some(mapping);
    }
    if let Some(rate) = patch.rate_limit {
        s.spec.rate_limit = Some(rate);
    }
    check_mapping(s.spec.format, s.spec.mapping.as_ref(), &mut errors);
    if !errors.is_empty() {
        return Err(ApiError::validation(errors));
    }
    s.updated_at = domain::now_ms();
    if !app.store.update_source(s.clone()).await? {
        return Err(ApiError::not_found("source", &id));
    }
    app.registry.reload().await?;
    Ok(Json(SourceOut::from(&s, &app.public_url())))
}

#[utoipa::path(delete, path = "/sources/{id}", tag = "sources", params(("id" = String, Path, description = "Source id or name")),
    responses((status = 204, description = "Deleted")))]
async fn remove(State(app): State<AppState>, Path(id): Path<String>) -> ApiResult<StatusCode> {
    let source = app
        .registry
        .source(&id)
        .ok_or_else(|| ApiError::not_found("source", &id))?;
    app.store.delete_source(&source.id).await?;
    app.registry.reload().await?;
    Ok(StatusCode::NO_CONTENT)
}
