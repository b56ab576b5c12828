//! `GET /api/v1/stats?window=1h`: how the hub has been doing, overall, per endpoint and per
//! source ([`crate::service::stats`] gathers the figures).

use axum::Json;
use axum::extract::{RawQuery, State};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::AppState;
use super::error::{ApiError, ApiResult, FieldError};
use crate::domain::Scope;
use crate::service::stats::StatsOut;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(stats))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct StatsQuery {
    /// `15m`, `1h`, `24h`, `7d` (default `24h`).
    #[param(pattern = r"^[0-9]{1,9}[smhd]?$")]
    window: Option<String>,
}

#[utoipa::path(get, path = "/stats", tag = "stats", params(StatsQuery),
    responses((status = 200, body = StatsOut)))]
async fn stats(
    State(app): State<AppState>,
    scope: Scope,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<StatsOut>> {
    let query: StatsQuery = serde_urlencoded::from_str(q.as_deref().unwrap_or(""))
        .map_err(|e| ApiError::validation(vec![FieldError::new("query", e.to_string())]))?;
    let window = match &query.window {
        Some(text) => crate::config::parse_duration(text)
            .map_err(|e| ApiError::validation(vec![FieldError::new("window", format!("{e:#}"))]))?,
        None => std::time::Duration::from_secs(24 * 3600),
    };
    Ok(Json(app.services.stats(scope, window).await?))
}
