//! `/api/v1/accounts`: trading accounts, where orders go, and their kill switch. Handlers
//! parse the request, call [`crate::service::accounts`] and shape the answer.

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::error::{ApiResult, Body, ErrorBody, parse_json, parse_optional_json, parse_query};
use super::{AppState, Page, page_after};
use crate::domain::{Scope, rfc3339};
use crate::model::{
    Account, Fill, Order, OrderRequest, PaperSettings, Rejection, RiskLimits, VenueKind,
};
use crate::service::accounts::{AccountIn, AccountPatch, HaltIn, MarkIn};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(show, update, remove))
        .routes(routes!(halt))
        .routes(routes!(resume))
        .routes(routes!(check))
        .routes(routes!(orders))
        .routes(routes!(positions))
        .routes(routes!(mark))
        .routes(routes!(performance))
}

/// An account's kill switch while it is on.
#[derive(Debug, Serialize, ToSchema)]
struct HaltOut {
    reason: String,
    since: String,
    /// Whether exits still go out.
    exits_allowed: bool,
    /// When it lifts by itself (a daily loss limit's halt); absent until a resume.
    #[serde(skip_serializing_if = "Option::is_none")]
    until: Option<String>,
}

/// An account as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
struct AccountOut {
    id: String,
    name: String,
    venue: VenueKind,
    /// Real money: an exchange account on its venue's live address. Always false for a
    /// paper account, and for an exchange account until it is set explicitly.
    live: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    paper: Option<PaperSettings>,
    /// An exchange account's settings; its key is shown only by its last four characters.
    #[serde(skip_serializing_if = "Option::is_none")]
    exchange: Option<ExchangeOut>,
    /// Set while the kill switch is on: no new entries.
    halted: Option<HaltOut>,
    risk: RiskLimits,
    created_at: String,
    updated_at: String,
}

/// An exchange account's settings as the API shows them: never its secret.
#[derive(Debug, Serialize, ToSchema)]
struct ExchangeOut {
    /// `…` and the key's last four characters.
    api_key: String,
    /// The REST address orders go to.
    base_url: String,
    recv_window_ms: u64,
    timeout_ms: u64,
    /// `one_way` or `hedge`.
    position_mode: crate::model::PositionMode,
}

impl AccountOut {
    fn from(a: Account) -> Self {
        let now = crate::domain::now_ms();
        let halted = a.halt_at(now).cloned();
        let live = a.live();
        let exchange = a.exchange.as_ref().map(|e| ExchangeOut {
            api_key: e.key_hint(),
            base_url: e.base_url.clone().unwrap_or_else(|| {
                crate::exchange::usual_base_url(a.venue, e.live)
                    .unwrap_or_default()
                    .to_owned()
            }),
            recv_window_ms: e.recv_window_ms,
            timeout_ms: e.timeout_ms,
            position_mode: e.position_mode,
        });
        Self {
            id: a.id,
            name: a.name,
            venue: a.venue,
            live,
            exchange,
            paper: a.paper,
            halted: halted.map(|h| HaltOut {
                reason: h.reason,
                since: rfc3339(h.since),
                exits_allowed: h.exits_allowed,
                until: h.until.map(rfc3339),
            }),
            risk: a.risk,
            created_at: rfc3339(a.created_at),
            updated_at: rfc3339(a.updated_at),
        }
    }
}

#[utoipa::path(post, path = "/accounts", tag = "accounts", request_body = AccountIn,
    responses((status = 201, body = AccountOut),
        (status = 409, description = "The name is taken", body = ErrorBody)))]
async fn create(
    State(app): State<AppState>,
    scope: Scope,
    Body(body): Body,
) -> ApiResult<(StatusCode, Json<AccountOut>)> {
    let input: AccountIn = parse_json(&body)?;
    let account = app.services.create_account(scope, input).await?;
    Ok((StatusCode::CREATED, Json(AccountOut::from(account))))
}

/// Filters of the account list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u32>,
    cursor: Option<String>,
    /// Only halted (`true`) or running (`false`) accounts.
    halted: Option<bool>,
}

#[utoipa::path(get, path = "/accounts", tag = "accounts", params(ListQuery),
    responses((status = 200, body = Page<AccountOut>)))]
async fn list(
    State(app): State<AppState>,
    scope: Scope,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<Page<AccountOut>>> {
    let q: ListQuery = parse_query(q.as_deref())?;
    let mut accounts = app.services.accounts(scope).await?;
    let now = crate::domain::now_ms();
    accounts.retain(|a| q.halted.is_none_or(|want| a.halt_at(now).is_some() == want));
    let page = page_after(
        accounts,
        q.limit,
        q.cursor,
        |a| a.id.clone(),
        AccountOut::from,
    )?;
    Ok(Json(page))
}

#[utoipa::path(get, path = "/accounts/{id}", tag = "accounts", params(("id" = String, Path, description = "Account id or name")),
    responses((status = 200, body = AccountOut)))]
async fn show(
    State(app): State<AppState>,
    scope: Scope,
    Path(id): Path<String>,
) -> ApiResult<Json<AccountOut>> {
    let account = app.services.account(scope, &id).await?;
    Ok(Json(AccountOut::from(account)))
}

#[utoipa::path(patch, path = "/accounts/{id}", tag = "accounts", params(("id" = String, Path, description = "Account id or name")),
    request_body = AccountPatch,
    responses((status = 200, body = AccountOut), (status = 422, description = "A setting is out of range", body = ErrorBody)))]
async fn update(
    State(app): State<AppState>,
    scope: Scope,
    Path(id): Path<String>,
    Body(body): Body,
) -> ApiResult<Json<AccountOut>> {
    let patch: AccountPatch = parse_json(&body)?;
    let account = app.services.update_account(scope, &id, patch).await?;
    Ok(Json(AccountOut::from(account)))
}

#[utoipa::path(delete, path = "/accounts/{id}", tag = "accounts", params(("id" = String, Path, description = "Account id or name")),
    responses((status = 204, description = "Deleted"),
        (status = 409, description = "An order destination uses it", body = ErrorBody)))]
async fn remove(
    State(app): State<AppState>,
    scope: Scope,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    app.services.delete_account(scope, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The kill switch: the account takes no new entries until it is resumed; exits still go
/// out unless `exits_allowed` is false.
#[utoipa::path(post, path = "/accounts/{id}/halt", tag = "accounts", params(("id" = String, Path, description = "Account id or name")),
    request_body(content = Option<HaltIn>, description = "Optional: no body halts with a default reason, exits allowed"),
    responses((status = 200, body = AccountOut)))]
async fn halt(
    State(app): State<AppState>,
    scope: Scope,
    Path(id): Path<String>,
    Body(body): Body,
) -> ApiResult<Json<AccountOut>> {
    let input: HaltIn = parse_optional_json(&body)?;
    let account = app.services.halt_account(scope, &id, input).await?;
    Ok(Json(AccountOut::from(account)))
}

/// Turns the kill switch off.
#[utoipa::path(post, path = "/accounts/{id}/resume", tag = "accounts", params(("id" = String, Path, description = "Account id or name")),
    responses((status = 200, body = AccountOut)))]
async fn resume(
    State(app): State<AppState>,
    scope: Scope,
    Path(id): Path<String>,
) -> ApiResult<Json<AccountOut>> {
    let account = app.services.resume_account(scope, &id).await?;
    Ok(Json(AccountOut::from(account)))
}

/// What a check of an exchange account's key found.
#[derive(Debug, Serialize, ToSchema)]
struct CheckOut {
    /// Whether the venue answered the signed call and the key may trade.
    ok: bool,
    venue: VenueKind,
    live: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    can_trade: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    balance: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    available: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    currency: Option<String>,
    /// How far the venue's clock is ahead of the hub's, in ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    clock_offset_ms: Option<i64>,
    /// Why the check failed: a stable code and the venue's own words.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<Rejection>,
}

/// Checks an exchange account's key with a signed read-only call to its venue: its balance
/// and whether it may trade. A refused key is a `200` with `ok: false` and the venue's reason.
#[utoipa::path(post, path = "/accounts/{id}/check", tag = "accounts", params(("id" = String, Path, description = "Account id or name")),
    responses((status = 200, body = CheckOut),
        (status = 409, description = "A paper account has no key", body = ErrorBody)))]
async fn check(
    State(app): State<AppState>,
    scope: Scope,
    Path(id): Path<String>,
) -> ApiResult<Json<CheckOut>> {
    let found = app.services.check_account(scope, &id).await?;
    let mut out = CheckOut {
        ok: false,
        venue: found.venue,
        live: found.live,
        can_trade: None,
        balance: None,
        available: None,
        currency: None,
        clock_offset_ms: None,
        error: None,
    };
    match found.answer {
        Ok(c) => {
            out.ok = c.can_trade;
            out.can_trade = Some(c.can_trade);
            out.balance = Some(c.balance);
            out.available = Some(c.available);
            out.currency = Some(c.currency);
            out.clock_offset_ms = Some(c.clock_offset_ms);
            if !c.can_trade {
                out.error = Some(Rejection::new(
                    "cannot_trade",
                    "the venue says this key may not trade: enable trading for it",
                ));
            }
        }
        Err(
            crate::exchange::VenueError::Refused(r)
            | crate::exchange::VenueError::Unavailable(r, _),
        ) => {
            out.error = Some(r);
        }
        Err(crate::exchange::VenueError::Unknown(why)) => {
            out.error = Some(Rejection::new("venue_unavailable", why));
        }
    }
    Ok(Json(out))
}

/// An order in the journal.
#[derive(Debug, Serialize, ToSchema)]
struct OrderOut {
    id: String,
    /// `<delivery id>-<leg>`: the same for every retry of the same signal.
    client_order_id: String,
    /// `intent`, `filled`, `resting`, `rejected`, `blocked`, `skipped` or `cancelled`.
    status: &'static str,
    endpoint_id: String,
    delivery_id: String,
    /// The signal.
    event_id: String,
    /// What was asked of the venue; null when nothing was (blocked or skipped).
    request: Option<OrderRequest>,
    fill: Option<Fill>,
    /// Why it was rejected, blocked, skipped or cancelled.
    reason: Option<Rejection>,
    created_at: String,
    updated_at: String,
}

impl OrderOut {
    fn from(o: Order) -> Self {
        Self {
            id: o.id,
            client_order_id: o.client_order_id,
            status: o.status.as_str(),
            endpoint_id: o.endpoint_id,
            delivery_id: o.delivery_id,
            event_id: o.event_id,
            request: o.request,
            fill: o.fill,
            reason: o.reason,
            created_at: rfc3339(o.created_at),
            updated_at: rfc3339(o.updated_at),
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct OrdersQuery {
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

/// The account's orders, newest first: each with its signal, what was asked and what came
/// of it.
#[utoipa::path(get, path = "/accounts/{id}/orders", tag = "accounts", params(("id" = String, Path, description = "Account id or name"), OrdersQuery),
    responses((status = 200, body = Vec<OrderOut>)))]
async fn orders(
    State(app): State<AppState>,
    scope: Scope,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<Vec<OrderOut>>> {
    let q: OrdersQuery = parse_query(q.as_deref())?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(super::error::ApiError::validation(vec![
            crate::domain::FieldError::new("limit", "between 1 and 1000"),
        ]));
    }
    let orders = app.services.account_orders(scope, &id, limit).await?;
    Ok(Json(orders.into_iter().map(OrderOut::from).collect()))
}

/// An open position, valued at the last price seen.
#[derive(Debug, Serialize, ToSchema)]
struct PositionOut {
    symbol: String,
    /// Base quantity: more than 0 long, less than 0 short.
    size: f64,
    entry_price: f64,
    leverage: f64,
    mark_price: f64,
    unrealized_pnl: f64,
}

/// An account's money and positions.
#[derive(Debug, Serialize, ToSchema)]
struct PositionsOut {
    quote: String,
    balance: f64,
    equity: f64,
    used_margin: f64,
    realized_pnl: f64,
    fees_paid: f64,
    positions: Vec<PositionOut>,
    /// Limit and stop orders waiting for their price (brackets among them), oldest first.
    resting: Vec<OrderRequest>,
}

#[utoipa::path(get, path = "/accounts/{id}/positions", tag = "accounts", params(("id" = String, Path, description = "Account id or name")),
    responses((status = 200, body = PositionsOut)))]
async fn positions(
    State(app): State<AppState>,
    scope: Scope,
    Path(id): Path<String>,
) -> ApiResult<Json<PositionsOut>> {
    let b = app.services.account_book(scope, &id).await?;
    let book = &b.book;
    let positions = book
        .positions
        .values()
        .map(|p| {
            let mark = book.marks.get(&p.symbol).copied().unwrap_or(p.entry_price);
            PositionOut {
                symbol: p.symbol.clone(),
                size: p.size,
                entry_price: p.entry_price,
                leverage: p.leverage,
                mark_price: mark,
                unrealized_pnl: p.unrealized_pnl(mark),
            }
        })
        .collect();
    Ok(Json(PositionsOut {
        quote: b.account.paper.map(|p| p.quote).unwrap_or_default(),
        balance: book.balance,
        equity: book.equity(),
        used_margin: book.used_margin(),
        realized_pnl: book.realized_pnl,
        fees_paid: book.fees_paid,
        positions,
        resting: book.resting.clone(),
    }))
}

/// The orders a price moved on.
#[derive(Debug, Serialize, ToSchema)]
struct MarkOut {
    /// Resting orders the price reached, filled or refused, and those cancelled because their
    /// position closed.
    orders: Vec<OrderOut>,
}

/// A price for one of the account's symbols, as the venue names it (`BTC/USDT:USDT`): the
/// paper exchange values positions at it, and resting orders it reaches execute (a
/// stop-loss fills, its take-profit is cancelled). Any signal an order destination receives
/// with its symbol and a price does the same.
#[utoipa::path(post, path = "/accounts/{id}/marks", tag = "accounts", params(("id" = String, Path, description = "Account id or name")),
    request_body = MarkIn, responses((status = 200, body = MarkOut)))]
async fn mark(
    State(app): State<AppState>,
    scope: Scope,
    Path(id): Path<String>,
    Body(body): Body,
) -> ApiResult<Json<MarkOut>> {
    let input: MarkIn = parse_json(&body)?;
    let orders = app.services.mark_account(scope, &id, input).await?;
    Ok(Json(MarkOut {
        orders: orders.into_iter().map(OrderOut::from).collect(),
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct PerformanceQuery {
    /// RFC 3339 time or Unix seconds; the fills before it make the start balance. Default:
    /// since the account opened.
    since: Option<String>,
}

/// What the account made: trades (closing fills), win rate, realised PnL, fees, profit
/// factor, maximum drawdown and the balance after each fill.
#[utoipa::path(get, path = "/accounts/{id}/performance", tag = "accounts", params(("id" = String, Path, description = "Account id or name"), PerformanceQuery),
    responses((status = 200, body = crate::orders::performance::Performance)))]
async fn performance(
    State(app): State<AppState>,
    scope: Scope,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<crate::orders::performance::Performance>> {
    let q: PerformanceQuery = parse_query(q.as_deref())?;
    let since = super::query_time("since", q.since.as_deref())?.unwrap_or(0);
    let report = app.services.account_performance(scope, &id, since).await?;
    Ok(Json(report))
}
