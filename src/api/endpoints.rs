//! `/api/v1/endpoints`: where deliveries go.

use crate::api::error::Body;
use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::error::{ApiError, ApiResult, ErrorBody, FieldError, parse_json};
use super::{AppState, Page, page_after};
use crate::deliver::retry::DEFAULT_SCHEDULE_MS;
use crate::domain::RateLimit;
use crate::domain::{self, EventTypePattern, Signing, prefix, rfc3339};
use crate::model::{Endpoint, Ordering};
use crate::render::{BodyFormat, JsonStyle, ParseMode, Preset, RenderSpec, freqtrade};
use serde_json::Value;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(show, update, remove))
        .routes(routes!(recover))
        .routes(routes!(test))
        .routes(routes!(enable))
        .routes(routes!(disable))
        .routes(routes!(rotate_secret))
}

/// The default timeout of one attempt.
pub const DEFAULT_TIMEOUT_MS: u64 = 10_000;

/// Headers the hub sets itself; an endpoint may not override them.
const RESERVED_HEADERS: &[&str] = &[
    "content-type",
    "content-length",
    "host",
    "user-agent",
    "transfer-encoding",
    "connection",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "x-webhook-signature",
    "x-webhook-id",
    "x-event-type",
    "x-delivery-id",
];

/// The settings of an endpoint as a client (or the config file) writes them. On create,
/// what is left out takes its default; on update, what is left out is unchanged, and `null`
/// clears an optional setting.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EndpointFields {
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    event_types: Option<Vec<EventTypePattern>>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    headers: Option<BTreeMap<String, String>>,
    #[serde(default)]
    signing: Option<Signing>,
    /// Seconds before each retry.
    #[serde(default)]
    retry_schedule: Option<Vec<f64>>,
    /// Seconds an attempt may take.
    #[serde(default)]
    timeout: Option<f64>,
    #[serde(default)]
    enabled: Option<bool>,
    #[serde(default, deserialize_with = "nullable")]
    preset: Option<Option<Preset>>,
    #[serde(default, deserialize_with = "nullable")]
    format: Option<Option<BodyFormat>>,
    #[serde(default)]
    templates: Option<BTreeMap<String, Value>>,
    #[serde(default)]
    json_style: Option<JsonStyle>,
    #[serde(default, deserialize_with = "nullable")]
    chat_id: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    parse_mode: Option<Option<ParseMode>>,
    #[serde(default, deserialize_with = "nullable")]
    sign_secret: Option<Option<String>>,
    #[serde(default)]
    embed: Option<bool>,
    #[serde(default, deserialize_with = "nullable")]
    username: Option<Option<String>>,
    /// Seconds after its event within which a delivery must be made, or it is `expired`.
    #[serde(default, deserialize_with = "nullable")]
    max_age: Option<Option<f64>>,
    /// `pair` or `endpoint`: deliveries with the same key go out strictly in event order.
    #[serde(default, deserialize_with = "nullable")]
    ordering: Option<Option<Ordering>>,
    /// Requests per window, as `30/min`, `5/2s`, `1/s`.
    #[serde(default, deserialize_with = "nullable")]
    rate_limit: Option<Option<RateLimit>>,
    /// Requests at once.
    #[serde(default, deserialize_with = "nullable")]
    max_concurrency: Option<Option<u32>>,
    /// The `webhook` section of a Freqtrade config: sets url, format, templates, event types,
    /// retries and timeout as Freqtrade would use them (other fields given here win).
    #[serde(default)]
    freqtrade: Option<Value>,
}

/// Tells a field set to `null` (`Some(None)`) from a field left out (`None`).
fn nullable<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

impl EndpointFields {
    /// Applies these fields to `e`.
    pub fn apply(self, e: &mut Endpoint) -> Result<(), ApiError> {
        if let Some(section) = &self.freqtrade {
            let imported = freqtrade::import(section).map_err(|problems| {
                ApiError::validation(
                    problems
                        .into_iter()
                        .map(|(f, m)| FieldError::new(f, m))
                        .collect(),
                )
            })?;
            if let Some(url) = imported.url {
                e.url = url.trim().to_owned();
            }
            e.render = imported.render;
            e.event_types = imported
                .event_types
                .iter()
                .filter_map(|t| EventTypePattern::parse(t).ok())
                .collect();
            e.retry_schedule_ms = imported.retry_schedule_ms;
            e.timeout_ms = imported.timeout_ms;
            // Freqtrade does not sign its requests.
            e.signing = Signing::None;
        }
        if let Some(url) = self.url {
            e.url = url.trim().to_owned();
        }
        if let Some(types) = self.event_types {
            e.event_types = types;
        }
        if let Some(d) = self.description {
            e.description = d;
        }
        if let Some(h) = self.headers {
            e.headers = h;
        }
        if let Some(s) = self.signing {
            e.signing = s;
        }
        if let Some(s) = self.retry_schedule {
            e.retry_schedule_ms = schedule_ms(&s)?;
        }
        if let Some(t) = self.timeout {
            e.timeout_ms = timeout_ms(t)?;
        }
        let r = &mut e.render;
        if let Some(p) = self.preset {
            r.preset = p;
        }
        if let Some(f) = self.format {
            r.format = f;
        }
        if let Some(t) = self.templates {
            r.templates = t;
        }
        if let Some(j) = self.json_style {
            r.json_style = j;
        }
        if let Some(c) = self.chat_id {
            r.chat_id = c;
        }
        if let Some(m) = self.parse_mode {
            r.parse_mode = m;
        }
        if let Some(s) = self.sign_secret {
            r.sign_secret = s;
        }
        if let Some(b) = self.embed {
            r.embed = b;
        }
        if let Some(u) = self.username {
            r.username = u;
        }
        if let Some(ordering) = self.ordering {
            e.policy.ordering = ordering;
        }
        if let Some(rate) = self.rate_limit {
            e.policy.rate_limit = rate;
        }
        if let Some(n) = self.max_concurrency {
            if n == Some(0) || n.is_some_and(|n| n > 256) {
                return Err(ApiError::validation(vec![FieldError::new(
                    "max_concurrency",
                    "must be between 1 and 256, or null",
                )]));
            }
            e.policy.max_concurrency = n;
        }
        if let Some(max_age) = self.max_age {
            e.policy.max_age_ms = match max_age {
                None => None,
                Some(secs) if (1.0..=7.0 * 86400.0).contains(&secs) => {
                    Some((secs * 1000.0).round() as u64)
                }
                Some(_) => {
                    return Err(ApiError::validation(vec![FieldError::new(
                        "max_age",
                        "must be between 1 second and 7 days (in seconds), or null",
                    )]));
                }
            };
        }
        if let Some(enabled) = self.enabled {
            e.enabled = enabled;
            if enabled {
                e.disabled_reason = None;
            } else if e.disabled_reason.is_none() {
                e.disabled_reason = Some("disabled by an operator".into());
            }
        }
        Ok(())
    }
}

/// A new endpoint with every default, to which a client's fields are applied.
pub fn new_endpoint(id: String, now: domain::Millis) -> Endpoint {
    Endpoint {
        id,
        url: String::new(),
        description: String::new(),
        event_types: vec![EventTypePattern::all()],
        headers: BTreeMap::new(),
        signing: Signing::default(),
        secret: domain::new_signing_secret(),
        enabled: true,
        disabled_reason: None,
        retry_schedule_ms: DEFAULT_SCHEDULE_MS.to_vec(),
        timeout_ms: DEFAULT_TIMEOUT_MS,
        created_at: now,
        updated_at: now,
        render: RenderSpec::default(),
        policy: Default::default(),
        previous_secret: None,
    }
}

/// An endpoint as the API shows it. The secret is only present in the reply to a create;
/// secrets inside the URL (chat tokens, keys) and headers are masked.
#[derive(Debug, Serialize, ToSchema)]
pub struct EndpointOut {
    id: String,
    url: String,
    description: String,
    event_types: Vec<EventTypePattern>,
    headers: BTreeMap<String, String>,
    signing: Signing,
    enabled: bool,
    disabled_reason: Option<String>,
    retry_schedule: Vec<f64>,
    timeout: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_age: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ordering: Option<Ordering>,
    /// The rate limit in force: the endpoint's own, or its preset's.
    #[serde(skip_serializing_if = "Option::is_none")]
    rate_limit: Option<RateLimit>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_concurrency: Option<u32>,
    #[serde(flatten)]
    render: RenderSpec,
    created_at: String,
    updated_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<String>,
}

impl EndpointOut {
    fn from(e: &Endpoint) -> Self {
        let mut render = e.render.clone();
        if render.sign_secret.is_some() {
            render.sign_secret = Some("***".into());
        }
        Self {
            id: e.id.clone(),
            url: crate::security::redact::url(&e.url),
            render,
            description: e.description.clone(),
            event_types: e.event_types.clone(),
            headers: e
                .headers
                .iter()
                .map(|(k, v)| {
                    let shown = if crate::security::redact::is_secret_name(k) {
                        crate::security::redact::MASK
                    } else {
                        v
                    };
                    (k.clone(), shown.to_owned())
                })
                .collect(),
            signing: e.signing,
            enabled: e.enabled,
            disabled_reason: e.disabled_reason.clone(),
            retry_schedule: e
                .retry_schedule_ms
                .iter()
                .map(|ms| *ms as f64 / 1000.0)
                .collect(),
            timeout: e.timeout_ms as f64 / 1000.0,
            max_age: e.policy.max_age_ms.map(|ms| ms as f64 / 1000.0),
            ordering: e.policy.ordering,
            rate_limit: e.rate_limit(),
            max_concurrency: e.policy.max_concurrency,
            created_at: rfc3339(e.created_at),
            updated_at: rfc3339(e.updated_at),
            secret: None,
        }
    }
}

/// Creates or brings up to date the endpoints declared in the config file. A declared
/// endpoint's settings are the file's (what the file leaves out takes its default); its secret,
/// its creation time and, unless the file says, its enabled state are kept.
pub async fn declare(
    store: &dyn crate::store::Store,
    config: &crate::config::Config,
) -> anyhow::Result<()> {
    let existing = store.list_endpoints().await?;
    for d in &config.endpoints {
        let id = format!("{}_{}", prefix::ENDPOINT, d.name);
        let context = |e: ApiError| {
            let detail = if e.errors.is_empty() {
                e.detail
            } else {
                e.errors
                    .iter()
                    .map(|f| format!("{}: {}", f.field, f.message))
                    .collect::<Vec<_>>()
                    .join("; ")
            };
            anyhow::anyhow!("config file, endpoint {:?}: {detail}", d.name)
        };
        let fields: EndpointFields = serde_json::from_value(d.settings.clone())
            .map_err(|e| anyhow::anyhow!("config file, endpoint {:?}: {e}", d.name))?;
        let now = domain::now_ms();
        let current = existing.iter().find(|e| e.id == id);
        let mut endpoint = new_endpoint(id.clone(), now);
        if let Some(current) = current {
            endpoint.secret = current.secret.clone();
            endpoint.previous_secret = current.previous_secret.clone();
            endpoint.created_at = current.created_at;
            endpoint.enabled = current.enabled;
            endpoint.disabled_reason = current.disabled_reason.clone();
            endpoint.updated_at = current.updated_at;
        }
        if fields.url.is_none() && fields.freqtrade.is_none() {
            return Err(context(ApiError::validation(vec![FieldError::new(
                "url", "required",
            )])));
        }
        fields.apply(&mut endpoint).map_err(context)?;
        validate(&endpoint, config).map_err(context)?;
        match current {
            Some(current) if *current == endpoint => {}
            Some(_) => {
                endpoint.updated_at = now;
                store.update_endpoint(endpoint).await?;
                tracing::info!(endpoint = %id, "endpoint updated from the config file");
            }
            None => {
                store.insert_endpoint(endpoint).await.map_err(|e| {
                    anyhow::anyhow!(
                        "config file, endpoint {:?}: {e} (an endpoint with id {id} was deleted; \
                         give the declared one another name)",
                        d.name
                    )
                })?;
                tracing::info!(endpoint = %id, "endpoint created from the config file");
            }
        }
    }
    Ok(())
}

/// Checks the settings of an endpoint; every problem is reported, not just the first.
fn validate(e: &Endpoint, config: &crate::config::Config) -> Result<(), ApiError> {
    let mut errors = Vec::new();
    let policy = crate::deliver::guard::Guard::new(config.allow_targets.clone());
    match reqwest::Url::parse(&e.url) {
        Ok(url) if !matches!(url.scheme(), "http" | "https") => {
            errors.push(FieldError::new("url", "must be an http or https URL"));
        }
        Ok(url) if url.host_str().is_none_or(str::is_empty) => {
            errors.push(FieldError::new("url", "must name a host"));
        }
        Ok(url) if config.https_only && url.scheme() != "https" => {
            errors.push(FieldError::new(
                "url",
                "the hub only delivers over https (--https-only)",
            ));
        }
        Ok(url) => {
            if let Err(blocked) = policy.check_url(&url) {
                errors.push(FieldError::new("url", blocked.0));
            }
        }
        Err(err) => errors.push(FieldError::new("url", format!("not a valid URL: {err}"))),
    }
    if e.event_types.is_empty() {
        errors.push(FieldError::new(
            "event_types",
            "must list at least one type or pattern (\"*\" for all)",
        ));
    }
    if e.description.len() > 1000 {
        errors.push(FieldError::new("description", "at most 1000 characters"));
    }
    for (name, value) in &e.headers {
        if axum::http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            errors.push(FieldError::new(
                format!("headers.{name}"),
                "not a valid header name",
            ));
        } else if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
            errors.push(FieldError::new(
                format!("headers.{name}"),
                "is set by the hub and cannot be overridden",
            ));
        }
        if axum::http::HeaderValue::from_str(value).is_err() {
            errors.push(FieldError::new(
                format!("headers.{name}"),
                "not a valid header value",
            ));
        }
    }
    if e.retry_schedule_ms.len() > 50 {
        errors.push(FieldError::new("retry_schedule", "at most 50 retries"));
    }
    for (field, message) in e.render.validate(&e.url) {
        errors.push(FieldError::new(field, message));
    }
    if !(100..=120_000).contains(&e.timeout_ms) {
        errors.push(FieldError::new(
            "timeout",
            "must be between 0.1 and 120 seconds",
        ));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::validation(errors))
    }
}

fn schedule_ms(secs: &[f64]) -> Result<Vec<u64>, ApiError> {
    secs.iter()
        .map(|s| {
            if s.is_finite() && *s > 0.0 && *s <= 7.0 * 86400.0 {
                Ok((s * 1000.0).round() as u64)
            } else {
                Err(ApiError::validation(vec![FieldError::new(
                    "retry_schedule",
                    "each delay must be more than 0 and at most 7 days (in seconds)",
                )]))
            }
        })
        .collect()
}

fn timeout_ms(secs: f64) -> Result<u64, ApiError> {
    if secs.is_finite() && secs > 0.0 {
        Ok((secs * 1000.0).round() as u64)
    } else {
        Err(ApiError::validation(vec![FieldError::new(
            "timeout",
            "must be a positive number of seconds",
        )]))
    }
}

#[utoipa::path(post, path = "/endpoints", tag = "endpoints", request_body = EndpointFields,
    responses((status = 201, description = "Created; `secret` is shown this once", body = EndpointOut)))]
async fn create(
    State(app): State<AppState>,
    Body(body): Body,
) -> ApiResult<(StatusCode, Json<EndpointOut>)> {
    let input: EndpointFields = parse_json(&body)?;
    if input.url.is_none()
        && input
            .freqtrade
            .as_ref()
            .is_none_or(|f| f.get("url").is_none() && f.pointer("/webhook/url").is_none())
    {
        return Err(ApiError::validation(vec![FieldError::new(
            "url", "required",
        )]));
    }
    let mut endpoint = new_endpoint(domain::new_id(prefix::ENDPOINT), domain::now_ms());
    input.apply(&mut endpoint)?;
    validate(&endpoint, &app.config)?;
    app.store.insert_endpoint(endpoint.clone()).await?;
    app.registry.reload().await?;
    tracing::info!(endpoint = %endpoint.id, "endpoint created");
    let mut out = EndpointOut::from(&endpoint);
    out.secret = Some(endpoint.secret);
    Ok((StatusCode::CREATED, Json(out)))
}

/// Filters of the endpoint list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u32>,
    cursor: Option<String>,
    enabled: Option<bool>,
    /// Endpoints that receive this event type.
    #[param(pattern = r"^[A-Za-z0-9_.:/-]{1,64}$")]
    event_type: Option<String>,
    preset: Option<Preset>,
}

#[utoipa::path(get, path = "/endpoints", tag = "endpoints", params(ListQuery),
    responses((status = 200, body = Page<EndpointOut>)))]
async fn list(
    State(app): State<AppState>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<Page<EndpointOut>>> {
    let q: ListQuery = super::error::parse_query(q.as_deref())?;
    let event_type = q
        .event_type
        .as_deref()
        .map(crate::domain::EventType::parse)
        .transpose()
        .map_err(|e| ApiError::validation(vec![FieldError::new("event_type", e.to_string())]))?;
    let endpoints = app
        .registry
        .endpoints()
        .into_iter()
        .filter(|e| q.enabled.is_none_or(|want| e.enabled == want))
        .filter(|e| event_type.as_ref().is_none_or(|t| e.subscribes_to(t)))
        .filter(|e| q.preset.is_none_or(|p| e.render.preset == Some(p)))
        .collect();
    let page = page_after(
        endpoints,
        q.limit,
        q.cursor,
        |e| e.id.clone(),
        |e| EndpointOut::from(&e),
    )?;
    Ok(Json(page))
}

#[utoipa::path(get, path = "/endpoints/{id}", tag = "endpoints", params(("id" = String, Path, description = "Endpoint id")),
    responses((status = 200, body = EndpointOut)))]
async fn show(State(app): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<EndpointOut>> {
    let endpoint = app
        .registry
        .endpoint(&id)
        .ok_or_else(|| ApiError::not_found("endpoint", &id))?;
    Ok(Json(EndpointOut::from(&endpoint)))
}

#[utoipa::path(patch, path = "/endpoints/{id}", tag = "endpoints", params(("id" = String, Path, description = "Endpoint id")),
    request_body = EndpointFields, responses((status = 200, body = EndpointOut)))]
async fn update(
    State(app): State<AppState>,
    Path(id): Path<String>,
    Body(body): Body,
) -> ApiResult<Json<EndpointOut>> {
    let patch: EndpointFields = parse_json(&body)?;
    let current = app
        .registry
        .endpoint(&id)
        .ok_or_else(|| ApiError::not_found("endpoint", &id))?;
    let mut e = (*current).clone();
    let re_enabled = patch.enabled == Some(true) && !e.enabled;
    patch.apply(&mut e)?;
    e.updated_at = domain::now_ms();
    validate(&e, &app.config)?;
    if !app.store.update_endpoint(e.clone()).await? {
        return Err(ApiError::not_found("endpoint", &id));
    }
    app.registry.reload().await?;
    if re_enabled {
        // Its pending deliveries are due again.
        app.dispatch.wake();
    }
    Ok(Json(EndpointOut::from(&e)))
}

#[utoipa::path(delete, path = "/endpoints/{id}", tag = "endpoints", params(("id" = String, Path, description = "Endpoint id")),
    responses((status = 204, description = "Deleted; its pending deliveries are cancelled")))]
async fn remove(State(app): State<AppState>, Path(id): Path<String>) -> ApiResult<StatusCode> {
    if !app.store.delete_endpoint(&id, domain::now_ms()).await? {
        return Err(ApiError::not_found("endpoint", &id));
    }
    app.registry.reload().await?;
    tracing::info!(endpoint = %id, "endpoint deleted; its pending deliveries are cancelled");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct RecoverIn {
    /// RFC 3339 or Unix seconds.
    #[schema(schema_with = super::openapi::time)]
    since: Value,
}

#[derive(Debug, Serialize, ToSchema)]
struct RecoverOut {
    /// Failed or expired deliveries made pending again.
    requeued: u64,
    /// Deliveries created for events the endpoint had none of (it was disabled).
    created: u64,
}

/// Catches an endpoint up since a time: its failed and expired deliveries are tried again, and
/// the events it missed while disabled are delivered, in event order.
#[utoipa::path(post, path = "/endpoints/{id}/recover", tag = "endpoints", params(("id" = String, Path, description = "Endpoint id")),
    request_body = RecoverIn, responses((status = 200, body = RecoverOut)))]
async fn recover(
    State(app): State<AppState>,
    Path(id): Path<String>,
    Body(body): Body,
) -> ApiResult<Json<RecoverOut>> {
    let input: RecoverIn = parse_json(&body)?;
    let since_text = match &input.since {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => String::new(),
    };
    let since = super::query_time("since", Some(&since_text))?.unwrap_or_default();
    let endpoint = app
        .registry
        .endpoint(&id)
        .ok_or_else(|| ApiError::not_found("endpoint", &id))?;
    let now = domain::now_ms();
    let requeued = app.store.requeue_failed(&id, since, now).await?;
    let created = app.ingestor.catch_up(&endpoint, since).await?;
    app.dispatch.wake();
    tracing::info!(endpoint = %id, requeued, created, "endpoint recovered");
    Ok(Json(RecoverOut { requeued, created }))
}

#[derive(Debug, Serialize, ToSchema)]
struct TestOut {
    event_id: String,
    delivery_id: String,
    /// The attempt, as recorded in the delivery log; `null` while it is still in progress.
    attempt: Option<crate::api::deliveries::AttemptOut>,
    /// Where to follow the delivery when the attempt was still in progress.
    #[serde(skip_serializing_if = "Option::is_none")]
    follow: Option<String>,
}

/// How long a test call waits for its attempt before answering that it is in progress: less
/// than the ten seconds API clients commonly allow, whatever the endpoint's own timeout.
const TEST_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Sends a `ping` event through the normal pipeline and answers with its first attempt, or,
/// when that takes longer than five seconds, with where to follow it.
#[utoipa::path(post, path = "/endpoints/{id}/test", tag = "endpoints", params(("id" = String, Path, description = "Endpoint id")),
    responses((status = 200, description = "The ping's first attempt", body = TestOut),
        (status = 202, description = "The attempt is still in progress: follow the delivery", body = TestOut),
        (status = 409, description = "The endpoint is disabled", body = ErrorBody)))]
async fn test(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<TestOut>)> {
    let endpoint = app
        .registry
        .endpoint(&id)
        .ok_or_else(|| ApiError::not_found("endpoint", &id))?;
    if !endpoint.enabled {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "endpoint_disabled",
            "the endpoint is disabled: enable it to test it",
        ));
    }
    let (event_id, delivery_id) = app.ingestor.ping(&endpoint).await?;
    // The attempt is recorded by the dispatcher.
    let deadline = tokio::time::Instant::now() + TEST_WAIT;
    loop {
        if let Some(attempt) = app
            .store
            .list_attempts(&delivery_id)
            .await?
            .into_iter()
            .next()
        {
            let attempt = Some(crate::api::deliveries::AttemptOut::from(attempt));
            return Ok((
                StatusCode::OK,
                Json(TestOut {
                    event_id,
                    delivery_id,
                    attempt,
                    follow: None,
                }),
            ));
        }
        if tokio::time::Instant::now() >= deadline {
            let follow = Some(format!("/api/v1/deliveries/{delivery_id}"));
            return Ok((
                StatusCode::ACCEPTED,
                Json(TestOut {
                    event_id,
                    delivery_id,
                    attempt: None,
                    follow,
                }),
            ));
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
}

#[utoipa::path(post, path = "/endpoints/{id}/enable", tag = "endpoints", params(("id" = String, Path, description = "Endpoint id")),
    responses((status = 200, body = EndpointOut)))]
async fn enable(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<EndpointOut>> {
    set_enabled(app, id, true).await
}

#[utoipa::path(post, path = "/endpoints/{id}/disable", tag = "endpoints", params(("id" = String, Path, description = "Endpoint id")),
    responses((status = 200, body = EndpointOut)))]
async fn disable(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<EndpointOut>> {
    set_enabled(app, id, false).await
}

async fn set_enabled(app: AppState, id: String, enabled: bool) -> ApiResult<Json<EndpointOut>> {
    let current = app
        .registry
        .endpoint(&id)
        .ok_or_else(|| ApiError::not_found("endpoint", &id))?;
    let mut e = (*current).clone();
    let was = e.enabled;
    EndpointFields {
        enabled: Some(enabled),
        ..EndpointFields::default()
    }
    .apply(&mut e)?;
    e.updated_at = domain::now_ms();
    if !app.store.update_endpoint(e.clone()).await? {
        return Err(ApiError::not_found("endpoint", &id));
    }
    app.registry.reload().await?;
    if enabled && !was {
        app.dispatch.wake();
    }
    Ok(Json(EndpointOut::from(&e)))
}

/// How long the previous secret keeps signing after a rotation, by default.
const DEFAULT_OVERLAP_SECS: f64 = 24.0 * 3600.0;

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct RotateIn {
    /// Seconds the previous secret keeps signing (default 24 h).
    #[serde(default)]
    overlap: Option<f64>,
}

#[derive(Debug, Serialize, ToSchema)]
struct RotateOut {
    id: String,
    /// The new secret, shown this once.
    secret: String,
    /// Until when deliveries also carry a signature under the previous secret.
    previous_valid_until: String,
}

/// A new signing secret; during the overlap deliveries are signed with both.
#[utoipa::path(post, path = "/endpoints/{id}/rotate-secret", tag = "endpoints", params(("id" = String, Path, description = "Endpoint id")),
    request_body(content = Option<RotateIn>, description = "Optional: no body (or `null`) keeps the default overlap of 24 h"),
    responses((status = 200, body = RotateOut)))]
async fn rotate_secret(
    State(app): State<AppState>,
    Path(id): Path<String>,
    Body(body): Body,
) -> ApiResult<Json<RotateOut>> {
    let input: RotateIn = if body.trim_ascii().is_empty() || body.trim_ascii() == b"null" {
        RotateIn::default()
    } else {
        parse_json(&body)?
    };
    let overlap = input.overlap.unwrap_or(DEFAULT_OVERLAP_SECS);
    if !(0.0..=30.0 * 86400.0).contains(&overlap) {
        return Err(ApiError::validation(vec![FieldError::new(
            "overlap",
            "must be between 0 and 30 days (in seconds)",
        )]));
    }
    let current = app
        .registry
        .endpoint(&id)
        .ok_or_else(|| ApiError::not_found("endpoint", &id))?;
    let mut e = (*current).clone();
    let now = domain::now_ms();
    let until = now + (overlap * 1000.0) as i64;
    e.previous_secret = (overlap > 0.0).then(|| (e.secret.clone(), until));
    e.secret = domain::new_signing_secret();
    e.updated_at = now;
    if !app.store.update_endpoint(e.clone()).await? {
        return Err(ApiError::not_found("endpoint", &id));
    }
    app.registry.reload().await?;
    tracing::info!(endpoint = %id, "endpoint secret rotated");
    Ok(Json(RotateOut {
        id,
        secret: e.secret,
        previous_valid_until: rfc3339(until),
    }))
}
