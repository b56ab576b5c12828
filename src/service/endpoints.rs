//! Endpoints: where deliveries go. Their settings as a client or the config file writes them
//! ([`EndpointFields`]), the rules those settings must keep, and what an operator does with an
//! endpoint: create, change, enable, disable, delete, rotate its secret, test it, and catch it
//! up after an outage.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::{Error, Result, Rules, Scope, Services, checked};
use crate::deliver::retry::DEFAULT_SCHEDULE_MS;
use crate::domain::{
    self, EventType, EventTypePattern, FieldError, Millis, RateLimit, Signing, prefix,
};
use crate::model::endpoint::ACCOUNT_SCHEME;
use crate::model::{Attempt, Endpoint, LabelFilter, OrderRoute, Ordering, Sizing};
use crate::render::{BodyFormat, Envelope, JsonStyle, ParseMode, Preset, RenderSpec, freqtrade};
use crate::store::Store;

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
    /// Labels its events must carry: `{"wallet": ["W1", "W2"], "pair": "SOL-PERP"}` wants
    /// events of wallet W1 or W2 on SOL-PERP. `{}` (the default): any labels.
    #[serde(default)]
    labels: Option<LabelFilter>,
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
    /// Without a preset or templates: `event` (the hub's event, the default) or
    /// `subscription` (`{id, type, created, data}`).
    #[serde(default)]
    envelope: Option<Envelope>,
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
    /// 3Commas: the Signal Bot's `secret`, or the DCA bot's `email_token`. Write-only.
    #[serde(default, deserialize_with = "nullable")]
    token: Option<Option<String>>,
    /// 3Commas Signal Bot: its `bot_uuid`.
    #[serde(default, deserialize_with = "nullable")]
    bot_uuid: Option<Option<String>>,
    /// 3Commas DCA bot: its `bot_id`.
    #[serde(default, deserialize_with = "nullable")]
    bot_id: Option<Option<String>>,
    /// 3Commas Signal Bot: `max_lag` in seconds (default 300).
    #[serde(default, deserialize_with = "nullable")]
    max_lag: Option<Option<u32>>,
    /// 3Commas DCA bot: `delay_seconds` (default 0).
    #[serde(default, deserialize_with = "nullable")]
    delay_seconds: Option<Option<u32>>,
    /// 3Commas Signal Bot's `tv_exchange`, or Cornix's `Exchange:` line.
    #[serde(default, deserialize_with = "nullable")]
    exchange: Option<Option<String>>,
    /// Pair (`BTC/USDT`) → the platform's name for it, where the derived one is not right.
    #[serde(default)]
    pairs: Option<BTreeMap<String, String>>,
    /// 3Commas Signal Bot: send the signal's amount as the `order`.
    #[serde(default)]
    signal_amount: Option<bool>,
    /// Cornix: the stop this many percent from the entry, when the signal has no stop_loss.
    #[serde(default, deserialize_with = "nullable")]
    stop_loss_percent: Option<Option<f64>>,
    /// Cornix: the take-profit this many percent from the entry, when the signal has none.
    #[serde(default, deserialize_with = "nullable")]
    take_profit_percent: Option<Option<f64>>,
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
    /// Makes the endpoint an order destination (its `url` is `account:<name or id>`): the
    /// symbols it trades, its order size, leverage and pyramiding.
    #[serde(default, deserialize_with = "super::nullable_object")]
    orders: Option<Option<OrderRoute>>,
}

/// Tells a field set to `null` (`Some(None)`) from a field left out (`None`).
fn nullable<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

impl EndpointFields {
    /// Applies these fields to `e`.
    pub fn apply(self, e: &mut Endpoint) -> Result<()> {
        if let Some(section) = &self.freqtrade {
            let imported = freqtrade::import(section).map_err(|problems| {
                Error::Invalid(
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
        if let Some(labels) = self.labels {
            e.labels = labels;
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
        if let Some(t) = self.token {
            r.token = t;
        }
        if let Some(b) = self.bot_uuid {
            r.bot_uuid = b;
        }
        if let Some(b) = self.bot_id {
            r.bot_id = b;
        }
        if let Some(s) = self.max_lag {
            r.max_lag = s;
        }
        if let Some(s) = self.delay_seconds {
            r.delay_seconds = s;
        }
        if let Some(x) = self.exchange {
            r.exchange = x;
        }
        if let Some(p) = self.pairs {
            r.pairs = p;
        }
        if let Some(b) = self.signal_amount {
            r.signal_amount = b;
        }
        if let Some(p) = self.stop_loss_percent {
            r.stop_loss_percent = p;
        }
        if let Some(p) = self.take_profit_percent {
            r.take_profit_percent = p;
        }
        if let Some(envelope) = self.envelope {
            r.envelope = envelope;
        }
        if let Some(ordering) = self.ordering {
            e.policy.ordering = ordering;
        }
        if let Some(rate) = self.rate_limit {
            e.policy.rate_limit = rate;
        }
        if let Some(orders) = self.orders {
            e.policy.orders = orders;
        }
        if let Some(n) = self.max_concurrency {
            if n == Some(0) || n.is_some_and(|n| n > 256) {
                return Err(Error::invalid(
                    "max_concurrency",
                    "must be between 1 and 256, or null",
                ));
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
                    return Err(Error::invalid(
                        "max_age",
                        "must be between 1 second and 7 days (in seconds), or null",
                    ));
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
        application_id: None,
        url: String::new(),
        description: String::new(),
        event_types: vec![EventTypePattern::all()],
        labels: Default::default(),
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

/// Checks an order destination's settings.
fn check_route(route: &OrderRoute, errors: &mut Vec<FieldError>) {
    if route.symbols.is_empty() {
        errors.push(FieldError::new(
            "orders.symbols",
            "name at least one symbol: {\"BINANCE:BTCUSDT.P\": \"BTC/USDT:USDT\"}",
        ));
    }
    for (from, to) in &route.symbols {
        if from.trim().is_empty() || to.trim().is_empty() || to.len() > 64 {
            errors.push(FieldError::new(
                format!("orders.symbols.{from}"),
                "a symbol of 1 to 64 characters on each side",
            ));
        }
    }
    let size = match route.size {
        Sizing::Base(v) | Sizing::Quote(v) | Sizing::Multiplier(v) => v,
        Sizing::PercentEquity(v) if v > 100.0 => f64::NAN,
        Sizing::PercentEquity(v) => v,
    };
    if !(size.is_finite() && size > 0.0 && size <= 1e12) {
        errors.push(FieldError::new(
            "orders.size",
            "more than 0 (and a percent of equity at most 100)",
        ));
    }
    if !(1.0..=125.0).contains(&route.leverage) {
        errors.push(FieldError::new("orders.leverage", "between 1 and 125"));
    }
    if !(1..=100).contains(&route.pyramiding) {
        errors.push(FieldError::new("orders.pyramiding", "between 1 and 100"));
    }
    let brackets = route.brackets.unwrap_or_default();
    for (field, pct) in [
        (
            "orders.brackets.stop_loss_percent",
            brackets.stop_loss_percent,
        ),
        (
            "orders.brackets.take_profit_percent",
            brackets.take_profit_percent,
        ),
    ] {
        // A stop 100% below a long's entry would sit at 0: never reached.
        if pct.is_some_and(|p| !(p > 0.0 && p < 100.0)) {
            errors.push(FieldError::new(field, "more than 0 and less than 100"));
        }
    }
    if route
        .liquidation_close_percent
        .is_some_and(|p| !(p > 0.0 && p <= 100.0))
    {
        errors.push(FieldError::new(
            "orders.liquidation_close_percent",
            "more than 0 and at most 100",
        ));
    }
}

/// Points an order destination at its account by id (`account:acc_…`), as it may be named
/// by its name; an account that does not exist is refused.
async fn resolve_account(store: &dyn Store, scope: Scope, e: &mut Endpoint) -> Result<()> {
    let Some(named) = e.account_id().map(str::to_owned) else {
        return Ok(());
    };
    if scope != Scope::Hub {
        return Err(Error::invalid(
            "url",
            "an application's endpoints deliver webhooks: only the operator's place orders",
        ));
    }
    let accounts = store.list_accounts(scope).await?;
    let Some(account) = accounts.iter().find(|a| a.id == named || a.name == named) else {
        return Err(Error::invalid(
            "url",
            format!("no account named {named:?}: create it first (POST /api/v1/accounts)"),
        ));
    };
    e.url = format!("{ACCOUNT_SCHEME}{}", account.id);
    Ok(())
}

/// Checks the settings of an endpoint; every problem is reported, not just the first.
fn validate(e: &Endpoint, rules: &Rules) -> Result<()> {
    let mut errors = Vec::new();
    let policy = crate::deliver::guard::Guard::new(rules.allow_targets.clone());
    match (e.account_id(), &e.policy.orders) {
        (Some(_), Some(route)) => check_route(route, &mut errors),
        (Some(_), None) => errors.push(FieldError::new(
            "orders",
            "an order destination (url account:NAME) needs its orders settings",
        )),
        (None, Some(_)) => errors.push(FieldError::new(
            "orders",
            "only an order destination (url account:NAME) places orders",
        )),
        (None, None) => {}
    }
    match reqwest::Url::parse(&e.url) {
        _ if e.account_id().is_some() => {}
        Ok(url) if !matches!(url.scheme(), "http" | "https") => {
            errors.push(FieldError::new("url", "must be an http or https URL"));
        }
        Ok(url) if url.host_str().is_none_or(str::is_empty) => {
            errors.push(FieldError::new("url", "must name a host"));
        }
        Ok(url) if rules.https_only && url.scheme() != "https" => {
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
    e.labels.check(&mut errors);
    if e.description.len() > 1000 {
        errors.push(FieldError::new("description", "at most 1000 characters"));
    }
    for (name, value) in &e.headers {
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
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
        if http::HeaderValue::from_str(value).is_err() {
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
    if let Some(preset) = e.render.preset
        && let Some(types) = preset.platform_types()
        && !e.event_types.iter().all(|t| types.contains(&t.as_str()))
    {
        errors.push(FieldError::new(
            "event_types",
            format!(
                "the {} preset acts on {} events only: list them ({})",
                preset.as_str(),
                types.join(" and "),
                types
                    .iter()
                    .map(|t| format!("{t:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    if !(100..=120_000).contains(&e.timeout_ms) {
        errors.push(FieldError::new(
            "timeout",
            "must be between 0.1 and 120 seconds",
        ));
    }
    checked(errors)
}

fn schedule_ms(secs: &[f64]) -> Result<Vec<u64>> {
    secs.iter()
        .map(|s| {
            if s.is_finite() && *s > 0.0 && *s <= 7.0 * 86400.0 {
                Ok((s * 1000.0).round() as u64)
            } else {
                Err(Error::invalid(
                    "retry_schedule",
                    "each delay must be more than 0 and at most 7 days (in seconds)",
                ))
            }
        })
        .collect()
}

fn timeout_ms(secs: f64) -> Result<u64> {
    if secs.is_finite() && secs > 0.0 {
        Ok((secs * 1000.0).round() as u64)
    } else {
        Err(Error::invalid(
            "timeout",
            "must be a positive number of seconds",
        ))
    }
}

/// An endpoint declared in the config file: a name (its id is `ep_<name>`) and the same
/// settings the API takes, including a Freqtrade `webhook` section under `freqtrade`.
#[derive(Debug, Clone, PartialEq)]
pub struct Declared {
    pub name: String,
    pub settings: Value,
}

/// Creates or brings up to date the endpoints declared in the config file. A declared
/// endpoint's settings are the file's (what the file leaves out takes its default); its secret,
/// its creation time and, unless the file says, its enabled state are kept. The first
/// declaration that breaks a rule stops it, naming the endpoint.
pub async fn declare(
    store: &dyn Store,
    scope: Scope,
    rules: &Rules,
    declared: &[Declared],
) -> anyhow::Result<()> {
    let existing = store.list_endpoints(scope.clone()).await?;
    for d in declared {
        let id = format!("{}_{}", prefix::ENDPOINT, d.name);
        let context = |e: Error| {
            let detail = e.to_string();
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
            return Err(context(Error::invalid("url", "required")));
        }
        fields.apply(&mut endpoint).map_err(context)?;
        resolve_account(store, scope.clone(), &mut endpoint)
            .await
            .map_err(context)?;
        validate(&endpoint, rules).map_err(context)?;
        match current {
            Some(current) if *current == endpoint => {}
            Some(_) => {
                endpoint.updated_at = now;
                store.update_endpoint(scope.clone(), endpoint).await?;
                tracing::info!(endpoint = %id, "endpoint updated from the config file");
            }
            None => {
                store.insert_endpoint(scope.clone(), endpoint).await.map_err(|e| {
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

/// Which endpoints a list shows.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub enabled: Option<bool>,
    /// Endpoints that receive this event type.
    pub event_type: Option<String>,
    pub preset: Option<Preset>,
}

/// How long the previous secret keeps signing after a rotation, by default.
pub const DEFAULT_OVERLAP_SECS: f64 = 24.0 * 3600.0;

/// What an endpoint would receive for a stored event, with templates not saved yet.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Preview {
    /// The event it was rendered from; none when the endpoint has none to take yet.
    pub event_id: Option<String>,
    pub event_type: Option<String>,
    pub content_type: Option<String>,
    pub body: Option<String>,
    /// Why it could not be rendered.
    pub error: Option<String>,
}

/// What a test call saw: the ping's ids, and its first attempt if it was made in time.
#[derive(Debug, Clone)]
pub struct Tested {
    pub event_id: String,
    pub delivery_id: String,
    pub attempt: Option<Attempt>,
}

impl Services {
    /// Creates an endpoint; its signing secret is in the result, to be shown this once.
    pub async fn create_endpoint(&self, scope: Scope, input: EndpointFields) -> Result<Endpoint> {
        if input.url.is_none()
            && input
                .freqtrade
                .as_ref()
                .is_none_or(|f| f.get("url").is_none() && f.pointer("/webhook/url").is_none())
        {
            return Err(Error::invalid("url", "required"));
        }
        let mut endpoint = new_endpoint(domain::new_id(prefix::ENDPOINT), domain::now_ms());
        endpoint.application_id = scope.application_id().map(str::to_owned);
        input.apply(&mut endpoint)?;
        resolve_account(&*self.store, scope.clone(), &mut endpoint).await?;
        validate(&endpoint, &self.rules)?;
        self.check_endpoint_quota(&scope)?;
        self.store.insert_endpoint(scope, endpoint.clone()).await?;
        self.registry.put_endpoint(endpoint.clone()).await;
        tracing::info!(endpoint = %endpoint.id, "endpoint created");
        Ok(endpoint)
    }

    /// The endpoints whose latest attempts failed: how many in a row, and since when.
    pub async fn failure_streaks(&self, scope: Scope) -> Result<Vec<crate::store::FailureStreak>> {
        Ok(self.store.failing_endpoints(scope).await?)
    }

    /// The endpoints that pass `filter`, by id.
    pub fn endpoints(&self, scope: Scope, filter: &Filter) -> Result<Vec<Arc<Endpoint>>> {
        let event_type = filter
            .event_type
            .as_deref()
            .map(EventType::parse)
            .transpose()
            .map_err(|e| Error::invalid("event_type", e.to_string()))?;
        Ok(self
            .registry
            .endpoints()
            .into_iter()
            .filter(|e| scope.includes(e.application_id.as_deref()))
            .filter(|e| filter.enabled.is_none_or(|want| e.enabled == want))
            .filter(|e| event_type.as_ref().is_none_or(|t| e.subscribes_to(t)))
            .filter(|e| filter.preset.is_none_or(|p| e.render.preset == Some(p)))
            .collect())
    }

    /// An endpoint by id, if `scope` sees it.
    pub fn endpoint(&self, scope: Scope, id: &str) -> Result<Arc<Endpoint>> {
        self.registry
            .endpoint(id)
            .filter(|e| scope.includes(e.application_id.as_deref()))
            .ok_or_else(|| Error::not_found("endpoint", id))
    }

    /// Changes an endpoint's settings: what `patch` leaves out is unchanged.
    pub async fn update_endpoint(
        &self,
        scope: Scope,
        id: &str,
        patch: EndpointFields,
    ) -> Result<Endpoint> {
        let mut e = (*self.endpoint(scope.clone(), id)?).clone();
        let re_enabled = patch.enabled == Some(true) && !e.enabled;
        patch.apply(&mut e)?;
        resolve_account(&*self.store, scope.clone(), &mut e).await?;
        e.updated_at = domain::now_ms();
        validate(&e, &self.rules)?;
        self.save(scope, &e).await?;
        if re_enabled {
            // Its pending deliveries are due again.
            self.dispatch.wake();
        }
        Ok(e)
    }

    /// Enables or disables an endpoint; a re-enabled endpoint's pending deliveries go out.
    pub async fn set_endpoint_enabled(
        &self,
        scope: Scope,
        id: &str,
        enabled: bool,
    ) -> Result<Endpoint> {
        let mut e = (*self.endpoint(scope.clone(), id)?).clone();
        let was = e.enabled;
        EndpointFields {
            enabled: Some(enabled),
            ..EndpointFields::default()
        }
        .apply(&mut e)?;
        e.updated_at = domain::now_ms();
        self.save(scope, &e).await?;
        if enabled && !was {
            self.dispatch.wake();
        }
        Ok(e)
    }

    /// Deletes an endpoint; its pending deliveries are cancelled.
    pub async fn delete_endpoint(&self, scope: Scope, id: &str) -> Result<()> {
        if !self
            .store
            .delete_endpoint(scope, id, domain::now_ms())
            .await?
        {
            return Err(Error::not_found("endpoint", id));
        }
        self.registry.drop_endpoint(id).await;
        tracing::info!(endpoint = %id, "endpoint deleted; its pending deliveries are cancelled");
        Ok(())
    }

    /// A new signing secret; for `overlap_secs` (default 24 h) the previous one signs too.
    /// Returns the endpoint, holding its new secret, and until when the previous one signs.
    pub async fn rotate_endpoint_secret(
        &self,
        scope: Scope,
        id: &str,
        overlap_secs: Option<f64>,
    ) -> Result<(Endpoint, Millis)> {
        let overlap = overlap_secs.unwrap_or(DEFAULT_OVERLAP_SECS);
        if !(0.0..=30.0 * 86400.0).contains(&overlap) {
            return Err(Error::invalid(
                "overlap",
                "must be between 0 and 30 days (in seconds)",
            ));
        }
        let mut e = (*self.endpoint(scope.clone(), id)?).clone();
        let now = domain::now_ms();
        let until = now + (overlap * 1000.0) as i64;
        e.previous_secret = (overlap > 0.0).then(|| (e.secret.clone(), until));
        e.secret = domain::new_signing_secret();
        e.updated_at = now;
        self.save(scope, &e).await?;
        tracing::info!(endpoint = %id, "endpoint secret rotated");
        Ok((e, until))
    }

    /// How a replay of an endpoint started at `since` is getting on: its deliveries changed
    /// since then, by status.
    pub async fn replay_progress(
        &self,
        scope: Scope,
        id: &str,
        since: Millis,
    ) -> Result<Vec<(String, u64)>> {
        let endpoint = self.endpoint(scope, id)?;
        Ok(self.store.changed_since(&endpoint.id, since).await?)
    }

    /// Catches an endpoint up since `since`: its failed and expired deliveries are tried
    /// again, and the events it missed while disabled are delivered, in event order. Returns
    /// how many deliveries were made pending again and how many were created.
    pub async fn recover_endpoint(
        &self,
        scope: Scope,
        id: &str,
        since: Millis,
    ) -> Result<(u64, u64)> {
        let endpoint = self.endpoint(scope, id)?;
        let now = domain::now_ms();
        let requeued = self.store.requeue_failed(id, since, now).await?;
        let created = self.ingestor.catch_up(&endpoint, since).await?;
        self.dispatch.wake();
        tracing::info!(endpoint = %id, requeued, created, "endpoint recovered");
        Ok((requeued, created))
    }

    /// Sends a `ping` event to an enabled endpoint through the normal pipeline and waits up
    /// to `wait` for its first attempt.
    pub async fn test_endpoint(
        &self,
        scope: Scope,
        id: &str,
        wait: std::time::Duration,
    ) -> Result<Tested> {
        let endpoint = self.endpoint(scope.clone(), id)?;
        if !endpoint.enabled {
            return Err(Error::conflict(
                "endpoint_disabled",
                "the endpoint is disabled: enable it to test it",
            ));
        }
        let (event_id, delivery_id) = self.ingestor.ping(&endpoint).await?;
        // The attempt is recorded by the dispatcher, maybe on another node: the log is where
        // it shows.
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let attempt = self
                .store
                .list_attempts(scope.clone(), &delivery_id)
                .await?
                .into_iter()
                .next();
            if attempt.is_some() || tokio::time::Instant::now() >= deadline {
                return Ok(Tested {
                    event_id,
                    delivery_id,
                    attempt,
                });
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
    }

    /// What an endpoint would receive with `templates` instead of its own, rendered from the
    /// newest stored event it takes: nothing is saved. A template that does not parse is an
    /// [`Error::Invalid`]; one that parses but cannot render this event says why in the
    /// preview.
    pub async fn preview_templates(
        &self,
        scope: Scope,
        id: &str,
        templates: BTreeMap<String, Value>,
    ) -> Result<Preview> {
        let endpoint = self.endpoint(scope.clone(), id)?;
        let spec = RenderSpec {
            templates,
            ..endpoint.render.clone()
        };
        let problems = spec.validate(&endpoint.url);
        if !problems.is_empty() {
            return Err(Error::Invalid(
                problems
                    .into_iter()
                    .map(|(f, m)| FieldError::new(f, m))
                    .collect(),
            ));
        }
        let recent = self
            .store
            .list_events(
                scope,
                crate::model::EventFilter {
                    limit: 200,
                    ..Default::default()
                },
            )
            .await?;
        let taken = recent.into_iter().find(|e| {
            crate::domain::EventType::parse(&e.event_type)
                .is_ok_and(|t| endpoint.event_types.iter().any(|p| p.matches(&t)))
        });
        let Some(event) = taken else {
            return Ok(Preview {
                event_id: None,
                event_type: None,
                content_type: None,
                body: None,
                error: Some("no stored event of the types this endpoint takes yet".into()),
            });
        };
        let rendered = spec.render(
            &endpoint.url,
            &event.event_type,
            &event.body,
            domain::now_ms(),
        );
        Ok(match rendered {
            Ok(r) => Preview {
                event_id: Some(event.id),
                event_type: Some(event.event_type),
                content_type: Some(r.content_type.to_owned()),
                body: Some(String::from_utf8_lossy(&r.body).into_owned()),
                error: None,
            },
            Err(e) => Preview {
                event_id: Some(event.id),
                event_type: Some(event.event_type),
                content_type: None,
                body: None,
                error: Some(e.to_string()),
            },
        })
    }

    /// Writes a changed endpoint and puts it in the registry.
    async fn save(&self, scope: Scope, e: &Endpoint) -> Result<()> {
        if !self.store.update_endpoint(scope, e.clone()).await? {
            return Err(Error::not_found("endpoint", &e.id));
        }
        self.registry.put_endpoint(e.clone()).await;
        Ok(())
    }
}
