//! Ingest: turning an inbound HTTP request into an event worth storing.
//!
//! A [`Source`](crate::model::Source) says who may send (an IP allow-list), how they prove it
//! ([`AuthSpec`]) and what their payloads look like ([`Format`]). [`accept`] applies those rules
//! to one request, in a fixed order: address, then signature or token, then body, so that an
//! unauthenticated sender learns nothing about payload validation. It is a pure function: the
//! HTTP handler reads the request, calls it, and hands the result to the store.

pub mod auth;
pub mod format;
pub mod quota;
pub mod submit;

use std::net::IpAddr;

use http::HeaderMap;
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

pub use auth::AuthSpec;
pub use format::{Format, Mapping};

use crate::domain::{EventType, Millis};
use crate::model::Labels;
pub use crate::model::source::{SourceSpec, TRADINGVIEW_ADDRESSES, parse_cidr};
use crate::security::sign::VerifyError;

/// One inbound request, as the HTTP layer read it.
#[derive(Debug)]
pub struct Inbound<'a> {
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
    pub peer: IpAddr,
    pub path_token: Option<&'a str>,
    pub query_token: Option<&'a str>,
    pub now: Millis,
}

/// An accepted request: what will be stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Accepted {
    pub event_type: EventType,
    pub data: Value,
    pub dedupe_key: String,
    /// The body to keep as "raw": the request body, or, when a secret travelled inside it, the
    /// payload with the secret removed.
    pub raw: bytes::Bytes,
}

/// Why a request was refused. Each has a stable code, counted and logged by that code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("requests from {0} are not allowed for this source")]
    AddressNotAllowed(IpAddr),
    #[error("the {0} header is missing")]
    MissingSignature(String),
    #[error("{0}")]
    InvalidSignature(VerifyError),
    #[error("no token was given (path, ?token= or body field)")]
    MissingToken,
    #[error("the token is not valid for this source")]
    InvalidToken,
    #[error("{0}")]
    MalformedBody(String),
    #[error("{}", describe(.0))]
    Invalid(Vec<crate::trading::Problem>),
}

fn describe(problems: &[crate::trading::Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("{}: {}", p.field, p.message))
        .collect::<Vec<_>>()
        .join("; ")
}

impl Rejection {
    /// The stable code of the error body and of the rejection counters.
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::AddressNotAllowed(_) => "address_not_allowed",
            Rejection::MissingSignature(_) => "missing_signature",
            Rejection::InvalidSignature(VerifyError::Timestamp(_)) => "timestamp_out_of_tolerance",
            Rejection::InvalidSignature(_) => "invalid_signature",
            Rejection::MissingToken => "missing_token",
            Rejection::InvalidToken => "invalid_token",
            Rejection::MalformedBody(_) => "malformed_body",
            Rejection::Invalid(_) => "invalid_payload",
        }
    }

    pub fn status(&self) -> http::StatusCode {
        use http::StatusCode;
        match self {
            Rejection::AddressNotAllowed(_) => StatusCode::FORBIDDEN,
            Rejection::MalformedBody(_) => StatusCode::BAD_REQUEST,
            Rejection::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            _ => StatusCode::UNAUTHORIZED,
        }
    }
}

/// Checks and reads one inbound request for `spec`, whose secret is `secret`.
pub fn accept(
    spec: &SourceSpec,
    secret: Option<&str>,
    req: &Inbound<'_>,
) -> Result<Accepted, Rejection> {
    if !spec.ip_allowlist.is_empty() && !spec.ip_allowlist.iter().any(|n| n.contains(&req.peer)) {
        return Err(Rejection::AddressNotAllowed(req.peer));
    }
    let body_token = spec.auth.verify(secret.unwrap_or_default(), req)?;
    let mut payload = spec.format.decode(req.body, req.headers)?;
    let mut raw = bytes::Bytes::copy_from_slice(req.body);
    // A token field is never kept, whether it was the proof or a token in the URL was.
    let field = match &spec.auth {
        AuthSpec::Token { field: Some(f) } => Some(f.as_str()),
        _ => None,
    };
    let given = field.and_then(|f| payload.as_object_mut().and_then(|o| o.shift_remove(f)));
    if body_token.is_some() {
        let given = given.as_ref().ok_or(Rejection::MissingToken)?;
        auth::check_token(
            secret.unwrap_or_default(),
            given.as_str().unwrap_or_default(),
        )?;
    }
    if given.is_some() || strips_secrets(spec.format, &payload) {
        // The secret must not be kept: store the payload without it instead of the raw body.
        if let format::Payload::Json(v) = &mut payload {
            if let Some(o) = v.as_object_mut() {
                remove_secrets(o);
            }
            raw = bytes::Bytes::from(v.to_string());
        }
    }
    let read = spec.format.interpret(payload, spec.mapping.as_ref())?;
    let dedupe_key = dedupe_key(
        req.headers,
        &read.data,
        read.id.as_deref(),
        spec.dedupe_field.as_deref(),
        req.body,
    );
    Ok(Accepted {
        event_type: read.event_type,
        data: read.data,
        dedupe_key,
        raw,
    })
}

/// Whether a TradingView body holds a secret field that must not be stored raw.
fn strips_secrets(format: Format, payload: &format::Payload) -> bool {
    format == Format::Tradingview
        && matches!(payload, format::Payload::Json(Value::Object(o))
            if SECRET_FIELDS.iter().any(|f| o.contains_key(*f)))
}

/// The body fields a sender's secret may travel in (TradingView's `passphrase`, a
/// `secret`): never stored, never shown.
pub const SECRET_FIELDS: [&str; 2] = ["passphrase", "secret"];

/// Removes the secret fields from `fields`; whether there were any.
pub fn remove_secrets(fields: &mut serde_json::Map<String, Value>) -> bool {
    let mut found = false;
    for field in SECRET_FIELDS {
        found |= fields.shift_remove(field).is_some();
    }
    found
}

/// The sender's idempotency key: an id header, else the id the format found (an envelope's
/// `id`, TradingView's `client_ref`), else the source's id field, else a hash of the raw body
/// (so that a byte-identical resend is recognised).
pub fn dedupe_key(
    headers: &HeaderMap,
    payload: &Value,
    format_id: Option<&str>,
    field: Option<&str>,
    raw: &[u8],
) -> String {
    for name in ["idempotency-key", "webhook-id", "x-delivery-id"] {
        if let Some(value) = headers.get(name).and_then(|v| v.to_str().ok()) {
            let value = value.trim();
            if !value.is_empty() && value.len() <= 256 {
                return value.to_owned();
            }
        }
    }
    if let Some(id) = format_id.filter(|id| !id.is_empty() && id.len() <= 256) {
        return id.to_owned();
    }
    if let Some(field) = field {
        let found = if field.starts_with('/') {
            payload.pointer(field)
        } else {
            payload.get(field)
        };
        match found {
            Some(Value::String(s)) if !s.is_empty() => return s.clone(),
            Some(n @ Value::Number(_)) => return n.to_string(),
            _ => {}
        }
    }
    body_hash_key(raw)
}

/// The dedupe key of a body without an explicit id.
pub fn body_hash_key(raw: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(raw)))
}

/// The canonical event as delivered to endpoints.
pub fn canonical_body(
    id: &str,
    event_type: &EventType,
    source: &str,
    created_at: Millis,
    data: &Value,
    labels: &Labels,
) -> String {
    /// The fields in the order they are written; serialized as it stands, `data` is not
    /// copied into a new JSON tree first.
    #[derive(Serialize)]
    struct Canonical<'a> {
        id: &'a str,
        #[serde(rename = "type")]
        event_type: &'a EventType,
        timestamp: String,
        source: &'a str,
        data: &'a Value,
        #[serde(skip_serializing_if = "Labels::is_empty")]
        labels: &'a Labels,
    }
    let event = Canonical {
        id,
        event_type,
        timestamp: crate::domain::rfc3339(created_at),
        source,
        data,
        labels,
    };
    serde_json::to_string(&event).expect("a JSON tree always serializes")
}

/// The labels an event is matched on: `source`, and `pair` and `strategy` when its data has
/// them as text, then the labels its publisher gave, which win.
pub fn event_labels(source: &str, data: &Value, given: &Labels) -> Labels {
    let mut labels = Labels::new();
    labels.insert("source".into(), source.to_owned());
    for name in ["pair", "strategy"] {
        if let Some(value) = data.get(name).and_then(Value::as_str) {
            labels.insert(name.into(), value.to_owned());
        }
    }
    labels.extend(given.iter().map(|(k, v)| (k.clone(), v.clone())));
    labels
}

/// [`event_labels`] of a stored event, from its canonical body.
pub fn stored_labels(body: &Value) -> Labels {
    let given: Labels = body
        .get("labels")
        .and_then(|l| serde_json::from_value(l.clone()).ok())
        .unwrap_or_default();
    event_labels(
        body.get("source")
            .and_then(Value::as_str)
            .unwrap_or_default(),
        body.get("data").unwrap_or(&Value::Null),
        &given,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inbound<'a>(headers: &'a HeaderMap, body: &'a [u8]) -> Inbound<'a> {
        Inbound {
            headers,
            body,
            peer: "127.0.0.1".parse().unwrap(),
            path_token: None,
            query_token: None,
            now: 0,
        }
    }

    #[test]
    fn the_dedupe_key_prefers_headers_then_the_named_field_then_a_hash() {
        let payload = serde_json::json!({"client_ref": "abc-1", "n": 7});
        let mut headers = HeaderMap::new();
        assert_eq!(
            dedupe_key(&headers, &payload, None, Some("client_ref"), b"x"),
            "abc-1"
        );
        assert_eq!(dedupe_key(&headers, &payload, None, Some("/n"), b"x"), "7");
        assert_eq!(
            dedupe_key(&headers, &payload, None, None, b"x"),
            body_hash_key(b"x")
        );
        headers.insert("x-delivery-id", "dlv-9".parse().unwrap());
        assert_eq!(
            dedupe_key(&headers, &payload, None, Some("client_ref"), b"x"),
            "dlv-9"
        );
        headers.insert("idempotency-key", "idem-1".parse().unwrap());
        assert_eq!(dedupe_key(&headers, &payload, None, None, b"x"), "idem-1");
    }

    #[test]
    fn a_body_token_is_checked_and_removed_from_what_is_kept() {
        let spec = SourceSpec {
            format: Format::Json,
            auth: AuthSpec::Token {
                field: Some("passphrase".into()),
            },
            ip_allowlist: vec![],
            dedupe_field: None,
            mapping: None,
            rate_limit: None,
        };
        let headers = HeaderMap::new();
        let body = br#"{"type":"entry","passphrase":"s3cret-s3cret","pair":"BTC/USDT"}"#;
        let ok = accept(&spec, Some("s3cret-s3cret"), &inbound(&headers, body)).unwrap();
        assert_eq!(
            ok.data,
            serde_json::json!({"type":"entry","pair":"BTC/USDT"})
        );
        assert!(!String::from_utf8_lossy(&ok.raw).contains("s3cret"));

        let bad = br#"{"type":"entry","passphrase":"guess","pair":"BTC/USDT"}"#;
        assert_eq!(
            accept(&spec, Some("s3cret-s3cret"), &inbound(&headers, bad)),
            Err(Rejection::InvalidToken)
        );
    }

    #[test]
    fn the_allow_list_is_checked_before_anything_else() {
        let spec = SourceSpec {
            format: Format::Json,
            auth: AuthSpec::None,
            ip_allowlist: vec![parse_cidr("52.89.214.238").unwrap()],
            dedupe_field: None,
            mapping: None,
            rate_limit: None,
        };
        let headers = HeaderMap::new();
        let err = accept(&spec, None, &inbound(&headers, b"not json")).unwrap_err();
        assert_eq!(err.code(), "address_not_allowed");
        assert_eq!(err.status(), http::StatusCode::FORBIDDEN);
    }

    #[test]
    fn the_canonical_body_has_its_fields_in_order_and_the_data_in_the_order_sent() {
        let data: Value = serde_json::from_str(
            r#"{"pair":"BTC/USDT","qty":0.5,"note":"a \"b\" é","z":1,"a":[1,{"y":2,"x":3}]}"#,
        )
        .unwrap();
        let body = canonical_body(
            "evt_1",
            &EventType::parse("entry").unwrap(),
            "api",
            1_700_000_000_000,
            &data,
            &Labels::new(),
        );
        assert_eq!(
            body,
            r#"{"id":"evt_1","type":"entry","timestamp":"2023-11-14T22:13:20Z","source":"api","data":{"pair":"BTC/USDT","qty":0.5,"note":"a \"b\" é","z":1,"a":[1,{"y":2,"x":3}]}}"#
        );
    }
}
