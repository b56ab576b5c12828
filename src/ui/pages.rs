//! The dashboard's pages: each reads through the services, as the API does, and renders one
//! embedded template.

use std::sync::OnceLock;

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use minijinja::Environment;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::AppState;
use crate::domain::{Scope, rfc3339};
use crate::model::{DeliveryFilter, DeliveryStatus, EventFilter, TokenScope};
use crate::security::session::{self, COOKIE, LOGIN_COOKIE, Session};

/// What every page of the dashboard is sent with: nothing from another origin, no framing,
/// forms only to the hub itself.
const CSP: &str = "default-src 'self'; frame-ancestors 'none'; form-action 'self'; \
                   base-uri 'none'";

fn templates() -> &'static Environment<'static> {
    static TEMPLATES: OnceLock<Environment<'static>> = OnceLock::new();
    TEMPLATES.get_or_init(|| {
        let mut env = Environment::new();
        for (name, text) in [
            ("base.html", include_str!("templates/base.html")),
            ("login.html", include_str!("templates/login.html")),
            ("overview.html", include_str!("templates/overview.html")),
            ("events.html", include_str!("templates/events.html")),
            ("event.html", include_str!("templates/event.html")),
            ("error.html", include_str!("templates/error.html")),
            ("endpoints.html", include_str!("templates/endpoints.html")),
            ("secret.html", include_str!("templates/secret.html")),
            ("deliveries.html", include_str!("templates/deliveries.html")),
            ("delivery.html", include_str!("templates/delivery.html")),
            ("recovered.html", include_str!("templates/recovered.html")),
            ("sources.html", include_str!("templates/sources.html")),
            ("accounts.html", include_str!("templates/accounts.html")),
            ("account.html", include_str!("templates/account.html")),
            ("tested.html", include_str!("templates/tested.html")),
            ("templates.html", include_str!("templates/templates.html")),
            ("portal.html", include_str!("templates/portal.html")),
        ] {
            env.add_template(name, text)
                .expect("the dashboard's templates parse");
        }
        env
    })
}

/// A page rendered from `template` with `context`, and the headers every page has.
fn page(status: StatusCode, template: &str, context: Value) -> Response {
    let body = templates()
        .get_template(template)
        .and_then(|t| t.render(minijinja::value::Serde(&context)));
    let mut response = match body {
        Ok(html) => (status, Html(html)).into_response(),
        Err(e) => {
            tracing::error!(error = %e, template, "a dashboard page could not be rendered");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the page could not be rendered",
            )
                .into_response()
        }
    };
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A page that says what went wrong, in the dashboard's frame.
fn error_page(status: StatusCode, signed: Option<&Signed>, message: &str) -> Response {
    let mut context = json!({"title": status.canonical_reason(), "message": message});
    if let Some(s) = signed {
        s.add_to(&mut context);
    }
    page(status, "error.html", context)
}

/// The page of a store that does not answer.
fn unavailable(signed: &Signed) -> Response {
    error_page(
        StatusCode::SERVICE_UNAVAILABLE,
        Some(signed),
        "the database does not answer",
    )
}

/// The value of cookie `name` in a request.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// A `Set-Cookie` value for the dashboard's path; `None` clears the cookie.
fn set_cookie(state: &AppState, name: &str, value: Option<&str>) -> HeaderValue {
    let secure = if state.config.tls.is_some() {
        "; Secure"
    } else {
        ""
    };
    let text = match value {
        Some(v) => format!("{name}={v}; Path=/ui; HttpOnly; SameSite=Strict{secure}"),
        None => format!("{name}=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0{secure}"),
    };
    HeaderValue::from_str(&text).expect("cookie values are URL-safe base64")
}

/// A signed-in browser: its session, what its token may do, and what it sees: the whole hub
/// (the operator), or one application (a customer portal session).
pub struct Signed {
    id: String,
    session: Session,
    read_only: bool,
    scope: Scope,
    /// A portal session's application, by name.
    application: Option<String>,
}

impl Signed {
    /// What every page shows of the session: the CSRF token of its forms, and whether it
    /// may change anything.
    fn add_to(&self, context: &mut Value) {
        context["csrf"] = json!(self.session.csrf);
        context["read_only"] = json!(self.read_only);
        context["portal"] = json!(self.application);
    }

    /// What this session sees.
    fn scope(&self) -> Scope {
        self.scope.clone()
    }

    /// The operator's session, or the page that says a portal has no such page.
    fn operator(self) -> Result<Self, Box<Response>> {
        if self.scope == Scope::Hub {
            return Ok(self);
        }
        Err(Box::new(error_page(
            StatusCode::FORBIDDEN,
            Some(&self),
            "this page is the operator's: the portal shows its application's endpoints and \
             deliveries",
        )))
    }

    /// `template` rendered with `context` and what every page shows of the session.
    fn page(&self, template: &str, mut context: Value) -> Response {
        self.add_to(&mut context);
        page(StatusCode::OK, template, context)
    }

    /// Whether a form's CSRF token is this session's.
    fn checks(&self, given: &str) -> bool {
        session::same(given, &self.session.csrf)
    }
}

/// The session of a request, if it has a live one whose token still exists and has not
/// expired: an operator's token (signed in with the form), or an application's portal session
/// key (opened with a portal link).
fn signed_in(state: &AppState, headers: &HeaderMap) -> Option<Signed> {
    let id = cookie(headers, COOKIE)?;
    let session = state.sessions.get(&id)?;
    let caller = state.registry.caller(&session.token_hash);
    let Some(caller) =
        caller.filter(|c| c.expires_at.is_none_or(|at| at > crate::domain::now_ms()))
    else {
        // The token was deleted: its sessions end with it.
        state.sessions.close(&id);
        return None;
    };
    Some(Signed {
        id,
        session,
        read_only: caller.access == TokenScope::ReadOnly,
        scope: caller.scope.clone(),
        application: caller.scope.application_id().map(|app| {
            state
                .registry
                .application(app)
                .map_or_else(|| app.to_owned(), |a| a.name.clone())
        }),
    })
}

/// The signed-in operator of a request, or where to go instead: the sign-in form, or (for a
/// portal session) the page that says this one is not in the portal.
fn operator_in(state: &AppState, headers: &HeaderMap) -> Result<Signed, Box<Response>> {
    signed_in(state, headers)
        .ok_or_else(|| Box::new(to_login()))?
        .operator()
}

fn to_login() -> Response {
    Redirect::to("/ui/login").into_response()
}

pub async fn login_form(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if signed_in(&state, &headers).is_some() {
        return Redirect::to("/ui").into_response();
    }
    login_page(&state, StatusCode::OK, None)
}

/// The sign-in form, with a fresh CSRF value bound to a cookie of its own.
fn login_page(state: &AppState, status: StatusCode, problem: Option<&str>) -> Response {
    entry_page(state, status, "login.html", "Sign in", problem)
}

/// A form that opens a session (`template`), with a fresh CSRF value bound to a cookie of its
/// own.
fn entry_page(
    state: &AppState,
    status: StatusCode,
    template: &str,
    title: &str,
    problem: Option<&str>,
) -> Response {
    let csrf = session::random();
    let mut response = page(
        status,
        template,
        json!({"title": title, "csrf": csrf, "problem": problem}),
    );
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(state, LOGIN_COOKIE, Some(&csrf)),
    );
    response
}

#[derive(Deserialize)]
pub struct LoginForm {
    token: String,
    csrf: String,
}

pub async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let bound = cookie(&headers, LOGIN_COOKIE);
    if !bound.is_some_and(|c| session::same(&c, &form.csrf)) {
        return login_page(
            &state,
            StatusCode::FORBIDDEN,
            Some("the form had expired or did not come from this page: sign in again"),
        );
    }
    let hash = crate::api::token_hash(form.token.trim());
    let usable = state
        .registry
        .caller(&hash)
        .is_some_and(|c| c.scope == Scope::Hub && c.expires_at.is_none());
    if !usable {
        return login_page(
            &state,
            StatusCode::UNAUTHORIZED,
            Some("this is not one of the hub's API tokens"),
        );
    }
    let id = state.sessions.open(hash);
    tracing::info!("dashboard session opened");
    let mut response = Redirect::to("/ui").into_response();
    let cookies = response.headers_mut();
    cookies.append(header::SET_COOKIE, set_cookie(&state, COOKIE, Some(&id)));
    cookies.append(header::SET_COOKIE, set_cookie(&state, LOGIN_COOKIE, None));
    response
}

/// Where a portal link lands (`/portal#token=…`): a form that its script fills with the
/// link's token and sends at once, so that the token never reaches a server log or a
/// `Referer`. Without JavaScript the token is pasted into it.
pub async fn portal_form(State(state): State<AppState>) -> Response {
    entry_page(
        &state,
        StatusCode::OK,
        "portal.html",
        "Customer portal",
        None,
    )
}

/// Opens a portal link, once: a session that sees the link's application only, read-only
/// if the link was.
pub async fn open_portal(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let refused = |status, problem: &str| {
        entry_page(
            &state,
            status,
            "portal.html",
            "Customer portal",
            Some(problem),
        )
    };
    let bound = cookie(&headers, LOGIN_COOKIE);
    if !bound.is_some_and(|c| session::same(&c, &form.csrf)) {
        return refused(
            StatusCode::FORBIDDEN,
            "the form had expired or did not come from this page: open the link again",
        );
    }
    let (session, key) = match state.services.open_portal_session(form.token.trim()).await {
        Ok(opened) => opened,
        Err(e @ crate::service::Error::Conflict { .. }) => {
            return refused(StatusCode::CONFLICT, &e.to_string());
        }
        Err(e) => {
            tracing::warn!(error = %e, "a portal link could not be opened");
            return refused(
                StatusCode::SERVICE_UNAVAILABLE,
                "the portal could not be opened just now: try the link again in a minute",
            );
        }
    };
    let id = state.sessions.open(crate::api::token_hash(&key));
    tracing::info!(application = ?session.application_id, "portal session opened in the dashboard");
    let mut response = Redirect::to("/ui/endpoints").into_response();
    let cookies = response.headers_mut();
    cookies.append(header::SET_COOKIE, set_cookie(&state, COOKIE, Some(&id)));
    cookies.append(header::SET_COOKIE, set_cookie(&state, LOGIN_COOKIE, None));
    response
}

pub async fn portal_script() -> Response {
    script(include_str!("assets/portal.js"))
}

pub async fn templates_script() -> Response {
    script(include_str!("assets/templates.js"))
}

/// One of the dashboard's own scripts.
fn script(text: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        text,
    )
        .into_response()
}

#[derive(Deserialize)]
pub struct CsrfForm {
    csrf: String,
}

pub async fn logout(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    let Some(signed) = signed_in(&state, &headers) else {
        return to_login();
    };
    if !signed.checks(&form.csrf) {
        return error_page(
            StatusCode::FORBIDDEN,
            Some(&signed),
            "the form did not come from this session",
        );
    }
    state.sessions.close(&signed.id);
    // A portal session comes back through a new link, not the operator's sign-in.
    let back = if signed.scope == Scope::Hub {
        "/ui/login"
    } else {
        "/portal"
    };
    let mut response = Redirect::to(back).into_response();
    response
        .headers_mut()
        .append(header::SET_COOKIE, set_cookie(&state, COOKIE, None));
    response
}

/// The most of an event's request body its page shows.
const RAW_SHOWN: usize = 64 * 1024;

/// How many of the newest successful deliveries the pages' latencies are taken from.
const LATENCY_SAMPLE: u32 = 2_000;

/// A bar chart of per-minute counts, drawn as SVG by the template: each bar's x, height and
/// count, scaled to the busiest minute.
fn chart(title: &str, counts: &[u64]) -> Value {
    const HEIGHT: f64 = 60.0;
    let top = counts.iter().copied().max().unwrap_or(0).max(1) as f64;
    let bars: Vec<Value> = counts
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let h = (*n as f64 / top * HEIGHT).max(if *n > 0 { 1.0 } else { 0.0 });
            json!({"x": i * 5, "y": HEIGHT - h, "h": h, "n": n, "minute": 60 - i})
        })
        .collect();
    json!({"title": title, "total": counts.iter().sum::<u64>(), "peak": top as u64,
           "bars": bars})
}

pub async fn overview(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let Some(signed) = signed_in(&state, &headers) else {
        return to_login();
    };
    if signed.scope != Scope::Hub {
        // A portal's home is its endpoints.
        return Redirect::to("/ui/endpoints").into_response();
    }
    let hour = std::time::Duration::from_secs(3600);
    // Each reads the hour from its own connection: together they take as long as the
    // longest.
    let (stats, failures, counts) = tokio::join!(
        state
            .services
            .stats_sampled(Scope::Hub, hour, LATENCY_SAMPLE),
        state.services.deliveries(
            Scope::Hub,
            DeliveryFilter {
                status: Some(DeliveryStatus::Failed),
                limit: 10,
                ..DeliveryFilter::default()
            },
        ),
        state.services.minute_counts(Scope::Hub, 60),
    );
    let (Ok(stats), Ok(failures), Ok(counts)) = (stats, failures, counts) else {
        return unavailable(&signed);
    };
    let (received, delivered, failed) = (counts.events, counts.succeeded, counts.failed);
    let charts = json!([
        chart("Events received per minute, last hour", &received),
        chart("Deliveries made per minute, last hour", &delivered),
        chart("Deliveries failed per minute, last hour", &failed),
    ]);
    let failures: Vec<Value> = failures
        .iter()
        .map(|d| {
            json!({"id": d.id, "event_id": d.event_id, "endpoint_id": d.endpoint_id,
                   "error": d.last_error, "status_code": d.last_status_code,
                   "at": rfc3339(d.updated_at)})
        })
        .collect();
    let context = json!({"title": "Overview", "nav": "overview", "charts": charts,
                         "stats": stats, "failures": failures});
    signed.page("overview.html", context)
}

#[derive(Deserialize, Default)]
pub struct EventQuery {
    /// An event's id: its page.
    #[serde(default)]
    id: Option<String>,
    #[serde(rename = "type", default)]
    event_type: Option<String>,
    #[serde(default)]
    source: Option<String>,
    #[serde(default)]
    pair: Option<String>,
    #[serde(default)]
    key: Option<String>,
    /// From and to: a time (UTC) as a browser's `datetime-local` field gives it
    /// (`2026-12-04T09:30`), RFC 3339, or Unix seconds.
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    to: Option<String>,
    /// The live tail: events from this time (Unix ms) on, the time its page was rendered,
    /// so that none arriving before the stream opens is missed.
    #[serde(default)]
    since: Option<crate::domain::Millis>,
}

/// A search field's value, when it has one.
fn given(v: &Option<String>) -> Option<String> {
    v.as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// A time from a search form: as a `datetime-local` field gives it (taken as UTC), or as the
/// API takes it.
fn form_time(name: &str, value: &Option<String>) -> Result<Option<crate::domain::Millis>, String> {
    let Some(v) = given(value) else {
        return Ok(None);
    };
    crate::domain::parse_time(&v)
        .or_else(|| crate::domain::parse_time(&format!("{v}:00Z")))
        .or_else(|| crate::domain::parse_time(&format!("{v}Z")))
        .map(Some)
        .ok_or_else(|| format!("{name}: a time such as 2026-12-04T09:30 (UTC)"))
}

pub async fn events(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<EventQuery>,
) -> Response {
    let signed = match operator_in(&state, &headers) {
        Ok(s) => s,
        Err(elsewhere) => return *elsewhere,
    };
    if let Some(id) = given(&query.id) {
        let to = form_urlencoded::byte_serialize(id.as_bytes()).collect::<String>();
        return Redirect::to(&format!("/ui/events/{to}")).into_response();
    }
    let rendered_at = crate::domain::now_ms();
    let filter = match event_filter(&state, &query) {
        Ok(f) => f,
        Err(problem) => return error_page(StatusCode::BAD_REQUEST, Some(&signed), &problem),
    };
    let Ok(found) = state.services.events(Scope::Hub, filter).await else {
        return unavailable(&signed);
    };
    let rows: Vec<Value> = found.iter().map(|e| event_row(&state, e)).collect();
    // The live tail follows the same search.
    let mut tail = form_urlencoded::Serializer::new(String::from("/ui/events/stream?"));
    for (name, value) in [
        ("type", &query.event_type),
        ("source", &query.source),
        ("pair", &query.pair),
        ("key", &query.key),
        ("from", &query.from),
        ("to", &query.to),
    ] {
        if let Some(v) = given(value) {
            tail.append_pair(name, &v);
        }
    }
    let tail = tail.append_pair("since", &rendered_at.to_string()).finish();
    let filter = json!({"type": given(&query.event_type), "source": given(&query.source),
                        "pair": given(&query.pair), "key": given(&query.key),
                        "from": given(&query.from), "to": given(&query.to)});
    let searched = filter
        .as_object()
        .is_some_and(|f| f.values().any(|v| !v.is_null()));
    let context = json!({"title": "Events", "nav": "events", "events": rows, "tail": tail,
                         "filter": filter, "searched": searched});
    signed.page("events.html", context)
}

/// A search of the events: by type, source name (or id; events keep the id), pair, dedupe
/// key and time.
fn event_filter(state: &AppState, query: &EventQuery) -> Result<EventFilter, String> {
    let source = given(&query.source).map(|given| {
        state
            .registry
            .source(&given)
            .map_or(given, |s| s.id.clone())
    });
    Ok(EventFilter {
        event_type: given(&query.event_type),
        source,
        pair: given(&query.pair),
        dedupe_key: given(&query.key),
        since: form_time("from", &query.from)?,
        until: form_time("to", &query.to)?,
        limit: 100,
        ..EventFilter::default()
    })
}

/// An event as the events page lists it; its source by name (by id once deleted).
fn event_row(state: &AppState, e: &crate::model::StoredEvent) -> Value {
    let body: Value = serde_json::from_str(&e.body).unwrap_or(Value::Null);
    let source = state
        .registry
        .source(&e.source)
        .map_or_else(|| e.source.clone(), |s| s.name.clone());
    json!({"id": e.id, "type": e.event_type, "source": source,
           "pair": body["data"]["pair"], "side": body["data"]["side"],
           "price": body["data"]["price"], "at": rfc3339(e.created_at)})
}

/// How often the live tail looks for new events.
const TAIL_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// What a live tail has sent so far.
struct Tail {
    state: AppState,
    session: String,
    filter: EventFilter,
    /// Events at or after this time are looked for.
    since: crate::domain::Millis,
    /// The events of the latest millisecond already sent.
    sent: std::collections::HashSet<String>,
}

/// The live tail of the events page: server-sent events, each a JSON array of the events
/// that arrived since the last, oldest first. It ends with the session.
pub async fn tail(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<EventQuery>,
) -> Response {
    use axum::response::sse::{Event, KeepAlive, Sse};
    let Some(signed) = signed_in(&state, &headers).filter(|s| s.scope == Scope::Hub) else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    let Ok(filter) = event_filter(&state, &query) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let start = Tail {
        session: signed.id,
        filter,
        // Not before the last hour: a stale page does not replay the day.
        since: query
            .since
            .unwrap_or(i64::MAX)
            .min(crate::domain::now_ms())
            .max(crate::domain::now_ms() - 3_600_000),
        sent: Default::default(),
        state,
    };
    let stream = futures_util::stream::unfold(start, |mut tail| async move {
        loop {
            tokio::time::sleep(TAIL_EVERY).await;
            let alive = tail.state.sessions.get(&tail.session).is_some_and(|s| {
                tail.state
                    .registry
                    .caller(&s.token_hash)
                    .is_some_and(|c| c.scope == Scope::Hub)
            });
            if !alive {
                return None;
            }
            let filter = EventFilter {
                since: Some(tail.since.max(tail.filter.since.unwrap_or(i64::MIN))),
                ..tail.filter.clone()
            };
            let Ok(found) = tail.state.services.events(Scope::Hub, filter).await else {
                continue;
            };
            let fresh: Vec<&crate::model::StoredEvent> = found
                .iter()
                .rev()
                .filter(|e| !tail.sent.contains(&e.id))
                .collect();
            if fresh.is_empty() {
                continue;
            }
            let latest = fresh
                .iter()
                .map(|e| e.created_at)
                .max()
                .unwrap_or(tail.since);
            if latest > tail.since {
                tail.sent.clear();
                tail.since = latest;
            }
            for e in found.iter().filter(|e| e.created_at == latest) {
                tail.sent.insert(e.id.clone());
            }
            let rows: Vec<Value> = fresh.iter().map(|e| event_row(&tail.state, e)).collect();
            let event = Event::default()
                .event("events")
                .data(Value::Array(rows).to_string());
            return Some((Ok::<_, std::convert::Infallible>(event), tail));
        }
    });
    let mut response = Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

pub async fn tail_script() -> Response {
    script(include_str!("assets/tail.js"))
}

pub async fn event(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let Some(signed) = signed_in(&state, &headers) else {
        return to_login();
    };
    let (found, raw) = tokio::join!(
        state.services.event(signed.scope(), &id),
        state.services.event_raw(signed.scope(), &id)
    );
    let (Ok((event, deliveries)), Ok(raw)) = (found, raw) else {
        return error_page(StatusCode::NOT_FOUND, Some(&signed), "no such event");
    };
    // What the sender sent, as text (at most 64 KB of it).
    let received = (!raw.is_empty()).then(|| {
        let text = String::from_utf8_lossy(&raw[..raw.len().min(RAW_SHOWN)]).into_owned();
        if raw.len() > RAW_SHOWN {
            format!("{text}\n… ({} bytes in all)", raw.len())
        } else {
            text
        }
    });
    let body: Value = serde_json::from_str(&event.body).unwrap_or(Value::Null);
    let deliveries: Vec<Value> = deliveries
        .iter()
        .map(|d| {
            json!({"id": d.id, "endpoint_id": d.endpoint_id, "status": d.status.as_str(),
                   "attempts": d.attempts, "error": d.last_error,
                   "status_code": d.last_status_code, "at": rfc3339(d.updated_at),
                   "retryable": d.status == DeliveryStatus::Failed})
        })
        .collect();
    let context = json!({
        "title": format!("Event {}", event.id), "nav": "events",
        "event": {"id": event.id, "type": event.event_type, "source": event.source,
                  "dedupe_key": event.dedupe_key, "at": rfc3339(event.created_at)},
        "data": serde_json::to_string_pretty(&body["data"]).unwrap_or_default(),
        "body": event.body,
        "received": received,
        "deliveries": deliveries,
    });
    signed.page("event.html", context)
}

pub async fn retry(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Response {
    let signed = match writer(&state, &headers, &form.csrf) {
        Ok(s) => s,
        Err(refused) => return *refused,
    };
    match state.services.retry_delivery(signed.scope(), &id).await {
        Ok(delivery) => Redirect::to(&format!("/ui/events/{}", delivery.event_id)).into_response(),
        Err(e) => error_page(StatusCode::CONFLICT, Some(&signed), &e.to_string()),
    }
}

/// A form that changes nothing, whose token must be the session's: the session, or the page
/// that says why not.
fn reader(state: &AppState, headers: &HeaderMap, csrf: &str) -> Result<Signed, Box<Response>> {
    let Some(signed) = signed_in(state, headers) else {
        return Err(Box::new(to_login()));
    };
    if signed.checks(csrf) {
        return Ok(signed);
    }
    Err(Box::new(error_page(
        StatusCode::FORBIDDEN,
        Some(&signed),
        "the form did not come from this session",
    )))
}

/// A form whose token must be the session's, from a session that may write: the session,
/// or the page that says why not.
fn writer(state: &AppState, headers: &HeaderMap, csrf: &str) -> Result<Signed, Box<Response>> {
    let Some(signed) = signed_in(state, headers) else {
        return Err(Box::new(to_login()));
    };
    let why = if !signed.checks(csrf) {
        "the form did not come from this session"
    } else if signed.read_only {
        "this session's token may only read"
    } else {
        return Ok(signed);
    };
    Err(Box::new(error_page(
        StatusCode::FORBIDDEN,
        Some(&signed),
        why,
    )))
}

/// How many of the newest failed deliveries the endpoints page reads their last errors
/// from: an endpoint whose last failure is older shows none.
const LAST_FAILURES: u32 = 1_000;

/// Endpoints with their health over the last 24 hours: success rate, latency, failures, the
/// last error, and why a disabled one is disabled.
#[derive(Deserialize)]
pub struct EndpointsQuery {
    /// The page after this endpoint id.
    #[serde(default)]
    after: Option<String>,
}

/// Endpoints a page of the endpoints list shows.
const ENDPOINTS_PAGE: usize = 100;

pub async fn endpoints(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<EndpointsQuery>,
) -> Response {
    let Some(signed) = signed_in(&state, &headers) else {
        return to_login();
    };
    let day = std::time::Duration::from_secs(24 * 3600);
    let all = state.services.endpoints(
        signed.scope(),
        &crate::service::endpoints::Filter::default(),
    );
    // One read of the newest failures, not one per endpoint: a provider's hub has thousands.
    // The reads go side by side, each on its own connection.
    let (stats, failures, streaks) = tokio::join!(
        state
            .services
            .stats_sampled(signed.scope(), day, LATENCY_SAMPLE),
        state.services.deliveries(
            signed.scope(),
            DeliveryFilter {
                status: Some(DeliveryStatus::Failed),
                limit: LAST_FAILURES,
                ..DeliveryFilter::default()
            },
        ),
        state.services.failure_streaks(signed.scope()),
    );
    let (Ok(all), Ok(stats), Ok(failures), Ok(streaks)) = (all, stats, failures, streaks) else {
        return unavailable(&signed);
    };
    let streaks: std::collections::HashMap<String, crate::store::FailureStreak> = streaks
        .into_iter()
        .map(|s| (s.endpoint_id.clone(), s))
        .collect();
    let mut last_failures = std::collections::HashMap::new();
    for d in failures {
        last_failures.entry(d.endpoint_id.clone()).or_insert(d);
    }
    let stats = serde_json::to_value(&stats).unwrap_or(Value::Null);
    let health_of: std::collections::HashMap<&str, &Value> = stats["endpoints"]
        .as_array()
        .map(|list| {
            list.iter()
                .filter_map(|s| Some((s["endpoint_id"].as_str()?, s)))
                .collect()
        })
        .unwrap_or_default();
    // A page at a time, in id order: a provider's hub has thousands.
    let after = given(&query.after);
    let mut shown = all
        .iter()
        .filter(|e| after.as_deref().is_none_or(|a| e.id.as_str() > a))
        .peekable();
    let mut rows = Vec::new();
    for e in shown.by_ref().take(ENDPOINTS_PAGE) {
        let health = health_of
            .get(e.id.as_str())
            .map_or(Value::Null, |h| (*h).clone());
        let last_failure = last_failures.get(&e.id);
        let streak = streaks.get(&e.id);
        rows.push(json!({
            "id": e.id,
            "url": crate::security::redact::url(&e.url),
            "enabled": e.enabled,
            "disabled_reason": e.disabled_reason,
            "event_types": e.event_types.iter().map(|t| t.as_str()).collect::<Vec<_>>(),
            "health": health,
            "in_a_row": streak.map(|s| json!({"failures": s.failures,
                                              "since": s.since.map(rfc3339)})),
            "last_error": last_failure.map(|d| json!({
                "error": d.last_error, "status_code": d.last_status_code,
                "at": rfc3339(d.updated_at), "event_id": d.event_id})),
        }));
    }
    let next = shown
        .peek()
        .is_some()
        .then(|| rows.last().map(|r| r["id"].clone()))
        .flatten();
    let context = json!({"title": "Endpoints", "nav": "endpoints", "endpoints": rows,
                         "next": next, "paged": after.is_some(), "count": all.len()});
    signed.page("endpoints.html", context)
}

#[derive(Deserialize)]
pub struct EnabledForm {
    csrf: String,
    enabled: bool,
}

pub async fn set_enabled(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<EnabledForm>,
) -> Response {
    let signed = match writer(&state, &headers, &form.csrf) {
        Ok(s) => s,
        Err(refused) => return *refused,
    };
    match state
        .services
        .set_endpoint_enabled(signed.scope(), &id, form.enabled)
        .await
    {
        Ok(_) => Redirect::to("/ui/endpoints").into_response(),
        Err(e) => error_page(StatusCode::NOT_FOUND, Some(&signed), &e.to_string()),
    }
}

/// A new signing secret, shown on this page once and never again.
pub async fn rotate(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Response {
    let signed = match writer(&state, &headers, &form.csrf) {
        Ok(s) => s,
        Err(refused) => return *refused,
    };
    match state
        .services
        .rotate_endpoint_secret(signed.scope(), &id, None)
        .await
    {
        Ok((endpoint, until)) => {
            let context = json!({
                "title": "New signing secret", "nav": "endpoints",
                "endpoint": endpoint.id, "secret": endpoint.secret,
                "previous_until": rfc3339(until),
            });
            signed.page("secret.html", context)
        }
        Err(e) => error_page(StatusCode::NOT_FOUND, Some(&signed), &e.to_string()),
    }
}

/// Sends a `ping` event to an endpoint through the pipeline, and shows its first attempt
/// (waiting up to 10 s for it).
pub async fn test(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Response {
    let signed = match writer(&state, &headers, &form.csrf) {
        Ok(s) => s,
        Err(refused) => return *refused,
    };
    let wait = std::time::Duration::from_secs(10);
    match state
        .services
        .test_endpoint(signed.scope(), &id, wait)
        .await
    {
        Ok(tested) => {
            let attempt = tested.attempt.map(|a| {
                json!({"status_code": a.status_code, "duration_ms": a.duration_ms,
                       "error_kind": a.error_kind, "error": a.error,
                       "ok": a.status_code.is_some_and(|c| (200..300).contains(&c)),
                       "response": a.response_body.chars().take(300).collect::<String>()})
            });
            let context = json!({
                "title": "Test", "nav": "endpoints", "endpoint": id,
                "event_id": tested.event_id, "delivery_id": tested.delivery_id,
                "attempt": attempt,
            });
            signed.page("tested.html", context)
        }
        Err(e) => error_page(StatusCode::CONFLICT, Some(&signed), &e.to_string()),
    }
}

/// An endpoint's templates in a form, with a preview of what it sends for the newest event
/// it takes.
pub async fn edit_templates(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let Some(signed) = signed_in(&state, &headers) else {
        return to_login();
    };
    let Ok(endpoint) = state.services.endpoint(signed.scope(), &id) else {
        return error_page(StatusCode::NOT_FOUND, Some(&signed), "no such endpoint");
    };
    let current = endpoint.render.templates.clone();
    let text = serde_json::to_string_pretty(&current).unwrap_or_default();
    templates_page(&state, &signed, &id, text, current, None).await
}

/// The templates page with `text` in its form, previewing `templates`; `note` says what
/// happened to the form.
async fn templates_page(
    state: &AppState,
    signed: &Signed,
    id: &str,
    text: String,
    templates: std::collections::BTreeMap<String, Value>,
    note: Option<(bool, String)>,
) -> Response {
    let note = note.map(|(ok, text)| json!({"ok": ok, "text": text}));
    let (preview, problems) = match state
        .services
        .preview_templates(signed.scope(), id, templates)
        .await
    {
        Ok(p) => (serde_json::to_value(p).unwrap_or(Value::Null), None),
        Err(e) => (Value::Null, Some(e.to_string())),
    };
    let context = json!({
        "title": format!("Templates of {id}"), "nav": "endpoints", "endpoint": id,
        "text": text, "preview": preview, "problems": problems, "note": note,
    });
    signed.page("templates.html", context)
}

#[derive(Deserialize)]
pub struct TemplatesForm {
    csrf: String,
    templates: String,
    /// `preview` or `save`.
    action: String,
}

/// Previews the form's templates (any session), or saves them (a session that may write):
/// each event type (or `*`) to its template.
pub async fn save_templates(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<TemplatesForm>,
) -> Response {
    let signed = if form.action == "save" {
        writer(&state, &headers, &form.csrf)
    } else {
        reader(&state, &headers, &form.csrf)
    };
    let signed = match signed {
        Ok(s) => s,
        Err(refused) => return *refused,
    };
    let text = form.templates;
    let parsed: Result<std::collections::BTreeMap<String, Value>, _> =
        serde_json::from_str(if text.trim().is_empty() { "{}" } else { &text });
    let templates = match parsed {
        Ok(t) => t,
        Err(e) => {
            let note = (
                false,
                format!("not a JSON object of event type to template: {e}"),
            );
            return templates_page(&state, &signed, &id, text, Default::default(), Some(note))
                .await;
        }
    };
    if form.action != "save" {
        return templates_page(&state, &signed, &id, text, templates, None).await;
    }
    let patch = serde_json::from_value(json!({"templates": templates.clone()}));
    let saved = match patch {
        Ok(patch) => {
            state
                .services
                .update_endpoint(signed.scope(), &id, patch)
                .await
        }
        Err(e) => return error_page(StatusCode::BAD_REQUEST, Some(&signed), &e.to_string()),
    };
    let note = match saved {
        Ok(_) => (
            true,
            "Saved: the endpoint sends these from its next delivery.".to_owned(),
        ),
        Err(e) => (false, format!("Not saved: {e}")),
    };
    templates_page(&state, &signed, &id, text, templates, Some(note)).await
}

#[derive(Deserialize)]
pub struct DeliveryQuery {
    #[serde(default)]
    endpoint: Option<String>,
    #[serde(default)]
    status: Option<String>,
}

/// Deliveries, newest first, by endpoint and status; and the form that replays an endpoint's
/// failures.
pub async fn deliveries(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<DeliveryQuery>,
) -> Response {
    let Some(signed) = signed_in(&state, &headers) else {
        return to_login();
    };
    let endpoint = given(&query.endpoint);
    let status = match query.status.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(given) => match serde_json::from_value::<DeliveryStatus>(json!(given)) {
            Ok(status) => Some(status),
            Err(_) => {
                return error_page(
                    StatusCode::BAD_REQUEST,
                    Some(&signed),
                    "status is one of pending, succeeded, failed, cancelled, expired",
                );
            }
        },
    };
    let filter = DeliveryFilter {
        endpoint_id: endpoint.clone(),
        status,
        limit: 100,
        ..DeliveryFilter::default()
    };
    let found = state.services.deliveries(signed.scope(), filter).await;
    let all = state.services.endpoints(
        signed.scope(),
        &crate::service::endpoints::Filter::default(),
    );
    let (Ok(found), Ok(all)) = (found, all) else {
        return unavailable(&signed);
    };
    let rows: Vec<Value> = found
        .iter()
        .map(|d| {
            json!({"id": d.id, "event_id": d.event_id, "endpoint_id": d.endpoint_id,
                   "status": d.status.as_str(), "attempts": d.attempts,
                   "error": d.last_error, "status_code": d.last_status_code,
                   "at": rfc3339(d.updated_at)})
        })
        .collect();
    let endpoints: Vec<&str> = all.iter().map(|e| e.id.as_str()).collect();
    let context = json!({
        "title": "Deliveries", "nav": "deliveries", "deliveries": rows, "endpoints": endpoints,
        "filter": {"endpoint": endpoint, "status": status.map(DeliveryStatus::as_str)},
        "statuses": ["pending", "succeeded", "failed", "cancelled", "expired"],
    });
    signed.page("deliveries.html", context)
}

/// A delivery and the timeline of its attempts.
pub async fn delivery(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let Some(signed) = signed_in(&state, &headers) else {
        return to_login();
    };
    let Ok((d, attempts)) = state.services.delivery(signed.scope(), &id).await else {
        return error_page(StatusCode::NOT_FOUND, Some(&signed), "no such delivery");
    };
    let attempts: Vec<Value> = attempts
        .iter()
        .map(|a| {
            let snippet: String = a.response_body.chars().take(300).collect();
            json!({"at": rfc3339(a.attempted_at), "status_code": a.status_code,
                   "duration_ms": a.duration_ms, "error_kind": a.error_kind,
                   "error": a.error, "response": snippet})
        })
        .collect();
    let context = json!({
        "title": format!("Delivery {}", d.id), "nav": "deliveries",
        "delivery": {"id": d.id, "event_id": d.event_id, "endpoint_id": d.endpoint_id,
                     "status": d.status.as_str(), "attempts": d.attempts,
                     "next": d.next_attempt_at.map(rfc3339),
                     "retryable": d.status == DeliveryStatus::Failed},
        "timeline": attempts,
    });
    signed.page("delivery.html", context)
}

#[derive(Deserialize)]
pub struct RecoverForm {
    csrf: String,
    /// How far back, in hours.
    hours: f64,
}

/// Replays an endpoint's failed and expired deliveries of the last hours, and delivers the
/// events it missed while disabled, in event order.
pub async fn recover(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<RecoverForm>,
) -> Response {
    let signed = match writer(&state, &headers, &form.csrf) {
        Ok(s) => s,
        Err(refused) => return *refused,
    };
    if !(form.hours.is_finite() && form.hours > 0.0 && form.hours <= 24.0 * 30.0) {
        return error_page(
            StatusCode::BAD_REQUEST,
            Some(&signed),
            "hours: more than 0 and at most 720 (30 days)",
        );
    }
    let started = crate::domain::now_ms();
    let since = started - (form.hours * 3_600_000.0) as i64;
    match state
        .services
        .recover_endpoint(signed.scope(), &id, since)
        .await
    {
        // The progress is a page of its own, which a reload does not replay again.
        Ok((requeued, created)) => Redirect::to(&format!(
            "/ui/endpoints/{id}/replay?started={started}&since={since}&total={}",
            requeued + created
        ))
        .into_response(),
        Err(e) => error_page(StatusCode::NOT_FOUND, Some(&signed), &e.to_string()),
    }
}

#[derive(Deserialize)]
pub struct ReplayQuery {
    /// When the replay was made (Unix ms).
    started: crate::domain::Millis,
    /// From when it replays (Unix ms).
    since: crate::domain::Millis,
    /// How many deliveries it made pending again or created.
    total: u64,
}

/// A replay's progress: the endpoint's deliveries changed since it started, by status. The
/// page reloads itself every two seconds while some are pending.
pub async fn replay_progress(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<ReplayQuery>,
) -> Response {
    let Some(signed) = signed_in(&state, &headers) else {
        return to_login();
    };
    let counts = match state
        .services
        .replay_progress(signed.scope(), &id, query.started)
        .await
    {
        Ok(counts) => counts,
        Err(e) => return error_page(StatusCode::NOT_FOUND, Some(&signed), &e.to_string()),
    };
    let count = |status: &str| {
        counts
            .iter()
            .filter(|(s, _)| s == status)
            .map(|(_, n)| *n)
            .sum::<u64>()
    };
    let (succeeded, pending) = (count("succeeded"), count("pending"));
    let failed = count("failed") + count("expired");
    let changed: u64 = counts.iter().map(|(_, n)| n).sum();
    // New traffic since the replay counts too: the total is never below what is shown.
    let total = query.total.max(changed);
    let context = json!({
        "title": "Replay", "nav": "deliveries", "endpoint": id,
        "since": rfc3339(query.since), "started": rfc3339(query.started),
        "total": total, "succeeded": succeeded, "failed": failed, "pending": pending,
        "done": succeeded + failed, "running": pending > 0,
    });
    signed.page("recovered.html", context)
}

/// The sources: where each takes events, and for a TradingView source the alert message to
/// paste. A source's secret or token is never shown.
pub async fn sources(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let signed = match operator_in(&state, &headers) {
        Ok(s) => s,
        Err(elsewhere) => return *elsewhere,
    };
    sources_page(&state, &signed, None)
}

/// A message tried on a source: the source's name, the message, and what came of it.
struct TriedOn {
    source: String,
    message: String,
    outcome: Value,
}

/// The sources page, with what a message tried on one of them became.
fn sources_page(state: &AppState, signed: &Signed, tried: Option<TriedOn>) -> Response {
    let base = state.public_url();
    let rows: Vec<Value> = state
        .services
        .sources(Scope::Hub, None)
        .iter()
        .map(|s| {
            let format = serde_json::to_value(s.spec.format).unwrap_or(Value::Null);
            let tradingview = format == "tradingview";
            let mine = tried.as_ref().filter(|t| t.source == s.name);
            let example = if tradingview {
                json!({"ticker": "BINANCE:BTCUSDT.P", "action": "buy", "price": "64000",
                       "market_position": "long", "client_ref": "try-1"})
                .to_string()
            } else {
                String::new()
            };
            json!({
                "name": s.name, "format": format,
                "ingest_url": format!("{base}/in/{}", s.name),
                "alert": tradingview.then(|| serde_json::to_string_pretty(&json!({
                    "ticker": "{{ticker}}", "action": "{{strategy.order.action}}",
                    "price": "{{close}}", "market_position": "{{strategy.market_position}}",
                    "client_ref": "{{strategy.order.id}}-{{timenow}}",
                })).unwrap_or_default()),
                "message": mine.map_or(example, |t| t.message.clone()),
                "tried": mine.map(|t| t.outcome.clone()),
            })
        })
        .collect();
    let context = json!({"title": "Sources", "nav": "sources", "sources": rows});
    signed.page("sources.html", context)
}

#[derive(Deserialize)]
pub struct TryForm {
    csrf: String,
    message: String,
}

/// What a source makes of a message: its event type and data, or why it would be refused.
/// Nothing is stored or sent, so trying an entry signal places no order.
pub async fn try_source(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Form(form): Form<TryForm>,
) -> Response {
    let signed = match reader(&state, &headers, &form.csrf).and_then(Signed::operator) {
        Ok(s) => s,
        Err(refused) => return *refused,
    };
    let outcome = match state
        .services
        .try_message(Scope::Hub, &name, form.message.as_bytes())
    {
        Ok(Ok(tried)) => json!({"ok": true, "type": tried.event_type,
                                "data": serde_json::to_string_pretty(&tried.data)
                                    .unwrap_or_default()}),
        Ok(Err(refused)) => json!({"ok": false, "code": refused.code(),
                                   "status": refused.status().as_u16(),
                                   "detail": refused.to_string()}),
        Err(e) => return error_page(StatusCode::NOT_FOUND, Some(&signed), &e.to_string()),
    };
    // The message goes back into its field without a secret it carried.
    let message = match serde_json::from_str::<serde_json::Map<String, Value>>(&form.message) {
        Ok(mut fields) => {
            if crate::ingest::remove_secrets(&mut fields) {
                Value::Object(fields).to_string()
            } else {
                form.message
            }
        }
        Err(_) => form.message,
    };
    let tried = TriedOn {
        source: name,
        message,
        outcome,
    };
    sources_page(&state, &signed, Some(tried))
}

/// The trading accounts, with whether each is live and halted.
pub async fn accounts(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let signed = match operator_in(&state, &headers) {
        Ok(s) => s,
        Err(elsewhere) => return *elsewhere,
    };
    let Ok(all) = state.services.accounts(Scope::Hub).await else {
        return unavailable(&signed);
    };
    let now = crate::domain::now_ms();
    let rows: Vec<Value> = all
        .iter()
        .map(|a| {
            json!({"id": a.id, "name": a.name, "venue": a.venue.as_str(), "live": a.live(),
                   "halted": a.halt_at(now).map(|h| h.reason.clone())})
        })
        .collect();
    let context = json!({"title": "Accounts", "nav": "accounts", "accounts": rows});
    signed.page("accounts.html", context)
}

/// An account: its kill switch, positions, balance and latest orders with their reasons.
pub async fn account(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let signed = match operator_in(&state, &headers) {
        Ok(s) => s,
        Err(elsewhere) => return *elsewhere,
    };
    let book = state.services.account_book(Scope::Hub, &id).await;
    let orders = state.services.account_orders(Scope::Hub, &id, 50).await;
    let performance = state.services.account_performance(Scope::Hub, &id, 0).await;
    let (Ok(book), Ok(orders), Ok(performance)) = (book, orders, performance) else {
        return error_page(StatusCode::NOT_FOUND, Some(&signed), "no such account");
    };
    let now = crate::domain::now_ms();
    let a = &book.account;
    let positions: Vec<Value> = book
        .book
        .positions
        .values()
        .map(|p| {
            let mark = book.book.marks.get(&p.symbol).copied();
            json!({"symbol": p.symbol, "side": if p.size > 0.0 { "long" } else { "short" },
                   "size": p.size.abs(), "entry_price": p.entry_price, "leverage": p.leverage,
                   "mark": mark, "pnl": mark.map(|m| p.unrealized_pnl(m))})
        })
        .collect();
    let orders: Vec<Value> = orders
        .iter()
        .map(|o| {
            json!({"id": o.id, "status": o.status.as_str(), "event_id": o.event_id,
                   "request": o.request, "fill": o.fill, "reason": o.reason,
                   "at": rfc3339(o.updated_at)})
        })
        .collect();
    let context = json!({
        "title": format!("Account {}", a.name), "nav": "accounts",
        "account": {"id": a.id, "name": a.name, "venue": a.venue.as_str(), "live": a.live(),
                    "halted": a.halt_at(now).map(|h| json!({"reason": h.reason,
                                                           "since": rfc3339(h.since),
                                                           "exits_allowed": h.exits_allowed}))},
        "balance": book.book.balance, "realized_pnl": book.book.realized_pnl,
        "fees": book.book.fees_paid, "positions": positions, "orders": orders,
        "performance": {"trades": performance.trades, "win_rate": performance.win_rate,
                        "net_pnl": performance.net_pnl,
                        "max_drawdown": performance.max_drawdown,
                        "max_drawdown_percent": performance.max_drawdown_percent},
        "curve": equity_curve(&performance),
    });
    signed.page("account.html", context)
}

/// The equity curve as the template draws it: an SVG polyline's points in a 300 × 60 box,
/// with the lowest and highest balance and the span; `None` before a second point.
fn equity_curve(performance: &crate::orders::performance::Performance) -> Option<Value> {
    const WIDTH: f64 = 300.0;
    const HEIGHT: f64 = 60.0;
    let points = &performance.equity_curve;
    let (first, last) = (points.first()?, points.last()?);
    if points.len() < 2 {
        return None;
    }
    let low = points
        .iter()
        .map(|p| p.balance)
        .fold(f64::INFINITY, f64::min);
    let high = points
        .iter()
        .map(|p| p.balance)
        .fold(f64::NEG_INFINITY, f64::max);
    let span = (last.at - first.at).max(1) as f64;
    // A flat curve is drawn across the middle.
    let range = if high > low { high - low } else { 1.0 };
    let line: Vec<String> = points
        .iter()
        .map(|p| {
            let x = (p.at - first.at) as f64 / span * WIDTH;
            let y = if high > low {
                HEIGHT - (p.balance - low) / range * HEIGHT
            } else {
                HEIGHT / 2.0
            };
            format!("{x:.1},{y:.1}")
        })
        .collect();
    Some(json!({"points": line.join(" "), "low": low, "high": high,
                "from": rfc3339(first.at), "to": rfc3339(last.at),
                "start": first.balance, "end": last.balance}))
}

#[derive(Deserialize)]
pub struct HaltForm {
    csrf: String,
    #[serde(default)]
    reason: Option<String>,
}

/// The kill switch: no new entries on the account until it is resumed; exits still go out.
pub async fn halt(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<HaltForm>,
) -> Response {
    let signed = match writer(&state, &headers, &form.csrf).and_then(Signed::operator) {
        Ok(s) => s,
        Err(refused) => return *refused,
    };
    let input = crate::service::accounts::HaltIn {
        reason: form.reason.filter(|r| !r.trim().is_empty()),
        exits_allowed: None,
    };
    match state.services.halt_account(Scope::Hub, &id, input).await {
        Ok(a) => Redirect::to(&format!("/ui/accounts/{}", a.id)).into_response(),
        Err(e) => error_page(StatusCode::BAD_REQUEST, Some(&signed), &e.to_string()),
    }
}

pub async fn resume(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Response {
    let signed = match writer(&state, &headers, &form.csrf).and_then(Signed::operator) {
        Ok(s) => s,
        Err(refused) => return *refused,
    };
    match state.services.resume_account(Scope::Hub, &id).await {
        Ok(a) => Redirect::to(&format!("/ui/accounts/{}", a.id)).into_response(),
        Err(e) => error_page(StatusCode::NOT_FOUND, Some(&signed), &e.to_string()),
    }
}

pub async fn stylesheet() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        include_str!("assets/app.css"),
    )
        .into_response()
}
