//! The HTTP surface: inbound webhooks (`/in`), the management API (`/api/v1`), health and
//! metrics. One module per resource; handlers parse, call the layer that owns the logic, and
//! shape the answer.

pub mod accounts;
pub mod applications;
pub mod deliveries;
pub mod endpoints;
pub mod error;
pub mod events;
pub mod inbound;
pub mod openapi;
pub mod sources;
pub mod stats;
pub mod subscriptions;
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
use crate::domain::Scope;
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
    /// The dashboard's signed-in browsers.
    pub sessions: crate::security::session::Sessions,
}

/// Inbound protection: requests in progress (shed with 503 beyond the limit, never queued
/// without bound) and request rates per client address and per source (429).
pub struct InboundLimits {
    slots: Arc<tokio::sync::Semaphore>,
    per_address: crate::ratelimit::Keyed<std::net::IpAddr>,
    per_source: crate::ratelimit::Keyed<String>,
    per_application: crate::ratelimit::Keyed<String>,
    address_limit: Option<crate::domain::RateLimit>,
}

impl InboundLimits {
    pub fn new(max_in_progress: usize, address_limit: Option<crate::domain::RateLimit>) -> Self {
        Self {
            slots: Arc::new(tokio::sync::Semaphore::new(max_in_progress)),
            per_address: Default::default(),
            per_source: Default::default(),
            per_application: Default::default(),
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

    /// Counts an API call with an application's key; 429 when it is over the application's
    /// rate limit.
    pub fn from_application(&self, registry: &Registry, id: &str) -> Result<(), ApiError> {
        let Some(limit) = registry.application(id).and_then(|a| a.settings.rate_limit) else {
            return Ok(());
        };
        self.per_application
            .take(&id.to_owned(), limit, crate::domain::now_ms())
            .map_err(|wait| {
                let mut e = ApiError::rate_limited(
                    format!("this application may make at most {limit} API calls"),
                    wait,
                );
                e.limit = Some(limit.count);
                e
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
        .merge(subscriptions::router(&state))
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
        .merge(applications::router())
        .layer(middleware::from_fn_with_state(state.clone(), require_token));
    let (router, mut document) = OpenApiRouter::with_openapi(openapi::document())
        .nest("/api/v1", api)
        .merge(inbound::router())
        .merge(applications::portal_router())
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
    let mut warnings = Vec::new();
    let not_after = app
        .metrics
        .tls_not_after
        .load(std::sync::atomic::Ordering::Relaxed);
    if not_after > 0 {
        let left = not_after - crate::domain::now_ms() / 1000;
        let at = crate::domain::rfc3339(not_after * 1000);
        if left <= 0 {
            return ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_ready",
                format!("the TLS certificate expired at {at}: senders refuse it; renew it"),
            )
            .into_response();
        }
        if left < CERTIFICATE_WARNING_SECONDS {
            warnings.push(format!(
                "the TLS certificate expires in {} day(s), at {at}; renew it",
                left / 86_400
            ));
        }
    }
    match app.store.list_tokens(crate::domain::Scope::Hub).await {
        Ok(_) => Json(Health {
            status: "ready",
            warnings,
        })
        .into_response(),
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

/// Every `/api` call needs a token; read-only tokens may only read. The token decides the
/// [`Scope`] the call acts in, which handlers take as an extractor: the operator's tokens act
/// on the whole hub, or on one application with `?application=<id or uid>`; an application's
/// keys act on their application only, on the routes an application has
/// ([`for_applications`]), and within its rate limit.
async fn require_token(State(app): State<AppState>, mut request: Request, next: Next) -> Response {
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token)
        .or_else(|| {
            // The seed's subscription API and its customers' scripts send `X-API-Key`.
            request
                .headers()
                .get("x-api-key")
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|t| !t.is_empty())
        });
    let Some(given) = given else {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing_token",
            "send an API token as Authorization: Bearer <token>",
        )
        .into_response();
    };
    let Some(caller) = app.registry.caller(&token_hash(given)) else {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            "the API token is not valid",
        )
        .into_response();
    };
    if caller
        .expires_at
        .is_some_and(|at| at <= crate::domain::now_ms())
    {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "expired_token",
            "this session has expired: open a new portal link",
        )
        .into_response();
    }
    if caller.access == TokenScope::ReadOnly
        && !matches!(*request.method(), Method::GET | Method::HEAD)
    {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "read_only_token",
            "this API token may only read",
        )
        .into_response();
    }
    let scope = match on_behalf(&app, &caller.scope, &mut request) {
        Ok(scope) => scope,
        Err(e) => return e.into_response(),
    };
    if let Scope::Application(id) = &scope {
        let route = request
            .extensions()
            .get::<axum::extract::MatchedPath>()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_default();
        if !for_applications(request.method(), &route) {
            return ApiError::new(
                StatusCode::FORBIDDEN,
                "operator_only",
                "this route is the operator's: an application's key, or a call on behalf of \
                 an application, cannot use it",
            )
            .into_response();
        }
        if caller.scope != Scope::Hub
            && let Err(e) = app.inbound.from_application(&app.registry, id)
        {
            return e.into_response();
        }
    }
    request.extensions_mut().insert(scope);
    next.run(request).await
}

/// The scope a call acts in: its token's, or, for the operator, the application named by
/// `?application=` (taken out of the query, which handlers then read without it).
fn on_behalf(app: &AppState, own: &Scope, request: &mut Request) -> Result<Scope, ApiError> {
    let Some(query) = request.uri().query() else {
        return Ok(own.clone());
    };
    let mut named = None;
    let rest: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .filter_map(|(k, v)| {
            if k == "application" {
                named = Some(v.into_owned());
                None
            } else {
                Some((k.into_owned(), v.into_owned()))
            }
        })
        .collect();
    let Some(named) = named else {
        return Ok(own.clone());
    };
    let found = app
        .registry
        .application(&named)
        .filter(|a| own.includes(Some(&a.id)))
        .ok_or_else(|| ApiError::not_found("application", &named))?;
    let mut parts = request.uri().clone().into_parts();
    let path = request.uri().path();
    let query = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(rest)
        .finish();
    let path_and_query = if query.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{query}")
    };
    parts.path_and_query = path_and_query.parse().ok();
    *request.uri_mut() = axum::http::Uri::from_parts(parts).map_err(|_| ApiError::internal())?;
    Ok(Scope::application(&found.id))
}

/// The routes an application's key may call: its endpoints, deliveries and the events sent
/// to them, its figures, its keys, and its own application. Everything else (sources,
/// accounts, publishing, the list of applications) is the operator's. A route missing here is
/// refused to applications, so that a new route is the operator's until it is scoped.
pub fn for_applications(method: &Method, route: &str) -> bool {
    if route.starts_with("/api/webhooks") {
        // The subscription API is an application's only.
        return true;
    }
    let Some(route) = route.strip_prefix("/api/v1") else {
        return false;
    };
    let reading = matches!(*method, Method::GET | Method::HEAD);
    match route {
        "/events" => reading,
        "/applications" => false,
        "/applications/{app}" => reading,
        r if r.starts_with("/applications/{app}/") => true,
        r => [
            "/endpoints",
            "/deliveries",
            "/events/{id}",
            "/stats",
            "/tokens",
        ]
        .iter()
        .any(|p| r == *p || r.starts_with(&format!("{p}/"))),
    }
}

/// The scope of a call, as [`require_token`] decided it.
impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Scope {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, ApiError> {
        parts.extensions.get::<Scope>().cloned().ok_or_else(|| {
            tracing::error!("a scoped handler was reached without its token's scope");
            ApiError::internal()
        })
    }
}

/// `/readyz` warns this long before the TLS certificate expires (14 days).
const CERTIFICATE_WARNING_SECONDS: i64 = 14 * 86_400;

#[derive(Serialize, utoipa::ToSchema)]
struct Health {
    status: &'static str,
    /// What needs attention soon, though the hub is ready now (a TLS certificate about to
    /// expire).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<String>,
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "health", security(()), responses((status = 200, body = Health)))]
async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok",
        warnings: Vec::new(),
    })
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
