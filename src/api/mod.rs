//! The HTTP surface: inbound webhooks (`/in`), the management API (`/api/v1`), health and
//! metrics. One module per resource; handlers parse, call the layer that owns the logic, and
//! shape the answer.

pub mod accounts;
pub mod deliveries;
pub mod endpoints;
pub mod error;
pub mod events;
pub mod inbound;
pub mod openapi;
pub mod sources;
pub mod stats;
pub mod tokens;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::config::Config;
use crate::dispatch::DispatchHandle;
use crate::ingest::submit::Ingestor;
use crate::metrics::Metrics;
use crate::model::TokenScope;
use crate::registry::Registry;
use crate::store::Store;
use error::{ApiError, ErrorBody};

/// What every handler can reach. Handlers and middleware each take a copy for every request,
/// so a copy is one shared pointer.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The parts of [`AppState`].
pub struct Shared {
    /// Limits on what senders may ask of the hub.
    pub inbound: Arc<InboundLimits>,
    pub store: Arc<dyn Store>,
    pub registry: Arc<Registry>,
    pub ingestor: Arc<Ingestor>,
    pub dispatch: DispatchHandle,
    pub metrics: Arc<Metrics>,
    pub config: Arc<Config>,
    /// What operators do with the hub's records; handlers call it.
    pub services: crate::service::Services,
}

/// Inbound protection: requests in progress (shed with 503 beyond the limit, never queued
/// without bound) and request rates per client address and per source (429).
pub struct InboundLimits {
    slots: Arc<tokio::sync::Semaphore>,
    per_address: crate::ratelimit::Keyed<std::net::IpAddr>,
    per_source: crate::ratelimit::Keyed<String>,
    address_limit: Option<crate::domain::RateLimit>,
}

impl InboundLimits {
    pub fn new(max_in_progress: usize, address_limit: Option<crate::domain::RateLimit>) -> Self {
        Self {
            slots: Arc::new(tokio::sync::Semaphore::new(max_in_progress)),
            per_address: Default::default(),
            per_source: Default::default(),
            address_limit,
        }
    }

    /// A slot for one ingest request, held until it is answered; 503 when there is none.
    pub fn slot(&self) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
        self.slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| ApiError::overloaded())
    }

    /// Counts a request from `address`; 429 when it is over the per-address rate.
    pub fn from_address(&self, address: std::net::IpAddr) -> Result<(), ApiError> {
        let Some(limit) = self.address_limit else {
            return Ok(());
        };
        self.per_address
            .take(&address, limit, crate::domain::now_ms())
            .map_err(|wait| {
                ApiError::rate_limited(format!("{address} is sending more than {limit}"), wait)
            })
    }

    /// Counts a request to a source with a rate limit; 429 when it is over.
    pub fn to_source(
        &self,
        source: &str,
        limit: Option<crate::domain::RateLimit>,
    ) -> Result<(), ApiError> {
        let Some(limit) = limit else { return Ok(()) };
        self.per_source
            .take(&source.to_owned(), limit, crate::domain::now_ms())
            .map_err(|wait| {
                ApiError::rate_limited(format!("source {source} accepts at most {limit}"), wait)
            })
    }
}

impl AppState {
    /// The base URL senders use to reach this hub.
    pub fn public_url(&self) -> String {
        match &self.config.public_url {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => format!("http://{}", self.config.listen),
        }
    }
}

/// The whole router.
pub fn router(state: AppState) -> Router {
    if state.config.no_api {
        // A worker-only node: health and metrics, for its supervisor and Prometheus.
        return Router::new()
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics))
            .fallback(not_found)
            .method_not_allowed_fallback(method_not_allowed)
            .with_state(state);
    }
    let (router, document) = routes(&state);
    let document: Arc<str> =
        Arc::from(serde_json::to_string(&document).expect("the OpenAPI document serializes"));
    router
        .route(
            "/api/v1/openapi.json",
            get(move || async move {
                (
                    [(header::CONTENT_TYPE, "application/json")],
                    document.to_string(),
                )
            }),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(request_id))
        .with_state(state)
}

/// Every route, and the OpenAPI document generated from the same handlers, so the two cannot
/// drift apart.
pub fn routes(state: &AppState) -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let api = OpenApiRouter::new()
        .merge(endpoints::router())
        .merge(sources::router())
        .merge(events::router())
        .merge(deliveries::router())
        .merge(tokens::router())
        .merge(stats::router())
        .merge(accounts::router())
        .layer(middleware::from_fn_with_state(state.clone(), require_token));
    let (router, mut document) = OpenApiRouter::with_openapi(openapi::document())
        .nest("/api/v1", api)
        .merge(inbound::router())
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
        .split_for_parts();
    openapi::conventions(&mut document);
    (router, document)
}

/// A route that exists, asked with a method it does not take.
async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take this method",
    )
}

/// Gives every request an id, the caller's `x-request-id` if it sent a usable one: every log
/// line of the request carries it, and the response echoes it. The span names the route, never
/// the raw path (an ingest path may hold a token).
async fn request_id(request: Request, next: Next) -> Response {
    use tracing::Instrument as _;
    let id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(|| crate::domain::new_id("req"));
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let span = tracing::info_span!("request", request_id = %id, method = %request.method(), route);
    let mut response = next.run(request).instrument(span).await;
    if let Ok(value) = header::HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

/// Ready to take traffic: the store answers and the dispatcher is running.
#[utoipa::path(get, path = "/readyz", tag = "health", security(()),
    responses((status = 200, body = Health), (status = 503, description = "Not ready, and why", body = ErrorBody)))]
async fn readyz(State(app): State<AppState>) -> Response {
    if app.dispatch.is_stopped() {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "the dispatcher is not running",
        )
        .into_response();
    }
    if let Some(problem) = app.store.disk_problem() {
        return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", problem)
            .into_response();
    }
    match app.store.list_tokens(crate::domain::Scope::Hub).await {
        Ok(_) => Json(Health { status: "ready" }).into_response(),
        Err(e) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            format!("the store does not answer: {e}"),
        )
        .into_response(),
    }
}

pub use crate::security::crypto::token_hash;

/// The token of an `Authorization: Bearer <token>` value; the scheme's name is
/// case-insensitive (RFC 9110), so `bearer` and `BEARER` are read too.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim_start().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Every `/api` call needs a token; read-only tokens may only read.
async fn require_token(State(app): State<AppState>, request: Request, next: Next) -> Response {
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token);
    let Some(given) = given else {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing_token",
            "send an API token as Authorization: Bearer <token>",
        )
        .into_response();
    };
    match app.registry.token_scope(&token_hash(given)) {
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            "the API token is not valid",
        )
        .into_response(),
        Some(TokenScope::ReadOnly) if !matches!(*request.method(), Method::GET | Method::HEAD) => {
            ApiError::new(
                StatusCode::FORBIDDEN,
                "read_only_token",
                "this API token may only read",
            )
            .into_response()
        }
        Some(_) => next.run(request).await,
    }
}

#[derive(Serialize, utoipa::ToSchema)]
struct Health {
    status: &'static str,
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "health", security(()), responses((status = 200, body = Health)))]
async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// Counters and histograms in the Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "health", security(()),
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")))]
async fn metrics(State(app): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(),
    )
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

/// A page of a list, with the cursor of the next page.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Page<T> {
    pub data: Vec<T>,
    pub next_cursor: Option<String>,
}

/// Default and largest page sizes.
pub const DEFAULT_LIMIT: u32 = 50;
pub const MAX_LIMIT: u32 = 500;

/// The page size asked for, checked.
pub fn page_limit(limit: Option<u32>) -> Result<u32, ApiError> {
    match limit {
        None => Ok(DEFAULT_LIMIT),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::validation(vec![error::FieldError::new(
            "limit",
            format!("must be between 1 and {MAX_LIMIT}"),
        )])),
    }
}

/// A page of an in-memory list ordered by id: the items after the cursor.
pub fn page_after<T, O>(
    items: Vec<T>,
    limit: Option<u32>,
    cursor: Option<String>,
    id: impl Fn(&T) -> String,
    out: impl Fn(T) -> O,
) -> Result<Page<O>, ApiError> {
    let limit = page_limit(limit)?;
    let rows: Vec<T> = items
        .into_iter()
        .filter(|item| cursor.as_ref().is_none_or(|c| id(item) > *c))
        .take(limit as usize + 1)
        .collect();
    Ok(paginate(rows, limit, id, out))
}

/// Cuts a list fetched with one extra row into a page.
pub fn paginate<T, O>(
    mut rows: Vec<T>,
    limit: u32,
    id: impl Fn(&T) -> String,
    out: impl Fn(T) -> O,
) -> Page<O> {
    let next_cursor = if rows.len() > limit as usize {
        rows.truncate(limit as usize);
        rows.last().map(&id)
    } else {
        None
    };
    Page {
        data: rows.into_iter().map(out).collect(),
        next_cursor,
    }
}

/// Parses an RFC 3339 time or Unix seconds from a query parameter.
pub fn query_time(name: &str, value: Option<&str>) -> Result<Option<i64>, ApiError> {
    value
        .map(|v| {
            crate::domain::parse_time(v).ok_or_else(|| {
                ApiError::validation(vec![error::FieldError::new(
                    name,
                    "expected an RFC 3339 time or Unix seconds",
                )])
            })
        })
        .transpose()
}
