//! The one error type of the HTTP API and its stable JSON body:
//! `{"code": "...", "detail": "...", "errors": [{"field": "...", "message": "..."}]}`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::store::StoreError;

pub use crate::domain::FieldError;

/// An error answered to an API client.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub detail: String,
    pub errors: Vec<FieldError>,
    /// Seconds to wait before trying again (sent as `Retry-After`).
    pub retry_after: Option<u64>,
    /// The limit that was reached, in requests per window: sent with the rest of the
    /// `RateLimit-Limit`, `RateLimit-Remaining` (0) and `RateLimit-Reset` headers.
    pub limit: Option<u32>,
}

/// The body of every error answer.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// Stable, machine-readable: `validation_failed`, `not_found`, `rate_limited`, …
    code: &'static str,
    /// What went wrong, for a human.
    detail: String,
    /// One entry per invalid field (422 only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    errors: Vec<FieldError>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            detail: detail.into(),
            errors: Vec::new(),
            retry_after: None,
            limit: None,
        }
    }

    pub fn not_found(what: &str, id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no {what} with id {id:?}"),
        )
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "malformed_body", detail)
    }

    /// 422 with one entry per invalid field.
    pub fn validation(errors: Vec<FieldError>) -> Self {
        let detail = FieldError::joined(&errors);
        Self {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: "validation_failed",
            detail,
            errors,
            retry_after: None,
            limit: None,
        }
    }

    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "the hub could not complete the request; see its log",
        )
    }
}

impl From<crate::service::Error> for ApiError {
    fn from(e: crate::service::Error) -> Self {
        use crate::service::Error;
        match e {
            Error::Invalid(errors) => Self::validation(errors),
            Error::NotFound { what, id } => Self::not_found(what, &id),
            Error::Conflict { code, detail } => Self::new(StatusCode::CONFLICT, code, detail),
            Error::OverQuota { code, detail } => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, detail)
            }
            Error::Store(e) => e.into(),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(what) => Self::new(StatusCode::CONFLICT, "conflict", what),
            StoreError::Closed => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "the hub is shutting down; send again",
            ),
            StoreError::Busy(what) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                format!("{what}; send again"),
            ),
            other => {
                tracing::error!(error = %other, "store error");
                Self::internal()
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            code: self.code,
            detail: self.detail,
            errors: self.errors,
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            let headers = response.headers_mut();
            headers.insert(axum::http::header::RETRY_AFTER, secs.into());
            if let Some(limit) = self.limit {
                headers.insert("ratelimit-limit", limit.into());
                headers.insert("ratelimit-remaining", 0.into());
                headers.insert("ratelimit-reset", secs.into());
            }
        }
        response
    }
}

impl ApiError {
    /// 429: the sender is over its rate; try again after `wait_ms`.
    pub fn rate_limited(detail: impl Into<String>, wait_ms: u64) -> Self {
        let mut e = Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", detail);
        e.retry_after = Some(wait_ms.div_ceil(1000).max(1));
        e
    }

    /// 503: the hub is at its limit of requests in progress; try again in a second.
    pub fn overloaded() -> Self {
        let mut e = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "the hub is handling as many requests as it may; try again in a second",
        );
        e.retry_after = Some(1);
        e
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// A request body, read whole; one over the API's limit (2 MiB) or one that cannot be read is
/// refused with the API's JSON error, not the framework's plain text.
pub struct Body(pub axum::body::Bytes);

impl<S: Send + Sync> axum::extract::FromRequest<S> for Body {
    type Rejection = ApiError;

    async fn from_request(request: axum::extract::Request, state: &S) -> ApiResult<Self> {
        match axum::body::Bytes::from_request(request, state).await {
            Ok(bytes) => Ok(Body(bytes)),
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "the body is larger than the API accepts (2 MiB)",
            )),
            Err(e) => Err(ApiError::bad_request(format!(
                "the body could not be read: {}",
                e.body_text()
            ))),
        }
    }
}

/// Parses a JSON request body, which is always an object: a syntax error is 400, a
/// well-formed body of the wrong shape is 422 naming the field.
/// Like [`parse_json`], for a body that may be left out: no body, or `null`, is the default.
pub fn parse_optional_json<T: serde::de::DeserializeOwned + Default>(bytes: &[u8]) -> ApiResult<T> {
    match bytes.trim_ascii() {
        b"" | b"null" => Ok(T::default()),
        _ => parse_json(bytes),
    }
}

pub fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> ApiResult<T> {
    // A body that is good is read once; the passes below are for saying what is wrong.
    let object = bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    if object && let Ok(value) = serde_json::from_slice(bytes) {
        return Ok(value);
    }
    if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
        return Err(ApiError::bad_request(format!(
            "the body is not valid JSON: {e}"
        )));
    }
    // serde reads a struct from an array too; `[null, null]` must not pass as `{}`.
    if !object {
        return Err(ApiError::validation(vec![FieldError::new(
            "",
            "the body must be a JSON object",
        )]));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let field = e.path().to_string();
        let field = if field == "." { String::new() } else { field };
        ApiError::validation(vec![FieldError::new(field, e.inner().to_string())])
    })
}

/// Parses a query string; a bad value is 422 naming the parameter.
pub fn parse_query<T: serde::de::DeserializeOwned>(query: Option<&str>) -> ApiResult<T> {
    let de = serde_urlencoded::Deserializer::new(form_urlencoded_parse(query.unwrap_or("")));
    serde_path_to_error::deserialize(de).map_err(|e| {
        ApiError::validation(vec![FieldError::new(
            e.path().to_string(),
            e.inner().to_string(),
        )])
    })
}

fn form_urlencoded_parse(query: &str) -> form_urlencoded::Parse<'_> {
    form_urlencoded::parse(query.as_bytes())
}
