//! `POST /in/{source}` and `POST /in/{source}/{token}`: inbound webhooks.
//!
//! The body is read with a hard size limit, checked and read by [`crate::ingest::accept`], then
//! stored. Every rejection is counted by its code and logged without the request's secrets
//! (the path may hold a token, so it is never logged).

use std::net::SocketAddr;

use axum::Json;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::AppState;
use super::error::{ApiError, ApiResult, ErrorBody, FieldError};
use crate::domain;
use crate::ingest::submit::{Receipt, Submission};
use crate::ingest::{self, Inbound};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(receive))
        .routes(routes!(receive_with_token))
}

/// What both inbound routes answer.
#[allow(dead_code)] // describes the answers; the handlers build them from `ApiError`
#[derive(utoipa::IntoResponses)]
enum Answers {
    /// Stored with its deliveries (or a duplicate of a stored event)
    #[response(status = 202)]
    Accepted(Receipt),
    /// The body cannot be read in the source's format
    #[response(status = 400)]
    Unreadable(ErrorBody),
    /// Missing or wrong token or signature
    #[response(status = 401)]
    Unauthenticated(ErrorBody),
    /// The sender's address is not allowed
    #[response(status = 403)]
    Forbidden(ErrorBody),
    /// No such source
    #[response(status = 404)]
    UnknownSource(ErrorBody),
    /// The body arrived too slowly
    #[response(status = 408)]
    BodyTimeout(ErrorBody),
    /// The body is too large
    #[response(status = 413)]
    TooLarge(ErrorBody),
    /// The payload is not a valid event
    #[response(status = 422)]
    Invalid(ErrorBody),
    /// Over the per-address or per-source rate; see Retry-After
    #[response(status = 429)]
    RateLimited(ErrorBody),
    /// The hub is at its limit of requests in progress
    #[response(status = 503)]
    Overloaded(ErrorBody),
}

/// Receives a webhook for a source authenticated by a signature, a header or a `token` query
/// parameter or body field.
#[utoipa::path(post, path = "/in/{source}", tag = "inbound",
    params(("source" = String, Path, description = "Source name"),
        ("token" = Option<String>, Query, description = "The source's token, for token authentication")),
    request_body(content = serde_json::Value, description = "The sender's payload: JSON, a form or text, as the source's format reads it"),
    responses(Answers),
    security(()),
)]
async fn receive(
    State(app): State<AppState>,
    Path(source): Path<String>,
    RawQuery(query): RawQuery,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<Receipt>)> {
    handle(app, source, None, query, peer, headers, body).await
}

/// Receives a webhook for a source whose token is in the path (for senders that cannot set
/// headers).
#[utoipa::path(post, path = "/in/{source}/{token}", tag = "inbound",
    params(("source" = String, Path, description = "Source name"), ("token" = String, Path, description = "The source's token")),
    request_body(content = serde_json::Value, description = "The sender's payload: JSON, a form or text, as the source's format reads it"),
    responses(Answers),
    security(()),
)]
async fn receive_with_token(
    State(app): State<AppState>,
    Path((source, token)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<Receipt>)> {
    handle(app, source, Some(token), query, peer, headers, body).await
}

fn reject(app: &AppState, source: &str, peer: SocketAddr, e: ApiError) -> ApiError {
    app.metrics.reject(e.code);
    if app.metrics.may_log_rejection() {
        tracing::warn!(source, peer = %peer.ip(), code = e.code, detail = %e.detail, "inbound request rejected");
    }
    e
}

async fn handle(
    app: AppState,
    source_name: String,
    path_token: Option<String>,
    query: Option<String>,
    peer: SocketAddr,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<Receipt>)> {
    // Shed load instead of queueing without bound, and slow down a flooding address, before
    // anything is read.
    let _slot = app.inbound.slot().map_err(|e| reject(&app, "-", peer, e))?;
    app.inbound
        .from_address(peer.ip())
        .map_err(|e| reject(&app, "-", peer, e))?;
    let Some(source) = app.registry.source(&source_name) else {
        return Err(reject(
            &app,
            "-",
            peer,
            ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_source",
                format!("no source named {source_name:?}"),
            ),
        ));
    };
    app.inbound
        .to_source(&source.name, source.spec.rate_limit)
        .map_err(|e| reject(&app, &source.name, peer, e))?;
    let limit = app.config.max_body_bytes;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the body is larger than {limit} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(reject(&app, &source.name, peer, too_large()));
    }
    let read = tokio::time::timeout(app.config.body_timeout, Limited::new(body, limit).collect());
    let Ok(read) = read.await else {
        return Err(reject(
            &app,
            &source.name,
            peer,
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!(
                    "the body did not arrive within {} s",
                    app.config.body_timeout.as_secs_f64()
                ),
            ),
        ));
    };
    let bytes = match read {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return Err(reject(&app, &source.name, peer, too_large()));
        }
        Err(e) => {
            return Err(reject(
                &app,
                &source.name,
                peer,
                ApiError::bad_request(format!("the body could not be read: {e}")),
            ));
        }
    };
    let query_token = query.as_deref().and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "token")
            .map(|(_, v)| v.into_owned())
    });
    let request = Inbound {
        headers: &headers,
        body: &bytes,
        peer: peer.ip(),
        path_token: path_token.as_deref(),
        query_token: query_token.as_deref(),
        now: domain::now_ms(),
    };
    let accepted =
        ingest::accept(&source.spec, source.secret.as_deref(), &request).map_err(|r| {
            let mut error = ApiError::new(r.status(), r.code(), r.to_string());
            if let ingest::Rejection::Invalid(problems) = r {
                error.errors = problems
                    .into_iter()
                    .map(|p| FieldError::new(p.field, p.message))
                    .collect();
            }
            reject(&app, &source.name, peer, error)
        })?;
    // A command's accounts must exist before anything is stored; it is carried out once
    // stored, and only the first time (a resent command changes nothing).
    let command = match source.spec.format {
        crate::model::source::Format::Command => Some(
            app.services
                .account_command(
                    crate::domain::Scope::Hub,
                    accepted.event_type.as_str(),
                    &accepted.data,
                )
                .await
                .map_err(|e| reject(&app, &source.name, peer, e.into()))?,
        ),
        _ => None,
    };
    let receipt = app
        .ingestor
        .submit(Submission {
            source_id: source.id.clone(),
            source_name: source.name.clone(),
            event_type: accepted.event_type,
            data: accepted.data,
            dedupe_key: accepted.dedupe_key,
            raw: accepted.raw,
            labels: Default::default(),
        })
        .await?;
    if let (Some(command), false) = (command, receipt.duplicate) {
        app.services
            .run_account_command(crate::domain::Scope::Hub, command, &source.name)
            .await?;
    }
    Ok((StatusCode::ACCEPTED, Json(receipt)))
}
