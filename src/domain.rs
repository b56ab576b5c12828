//! Validated types shared by every layer: identifiers, event types and the patterns endpoints
//! subscribe with, signing modes, secrets and times.
//!
//! Everything here is parsed once at the boundary (API, config, inbound payload); code further
//! down the pipeline trusts a value of these types without checking it again.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rand::RngCore;
use serde::{Deserialize, Serialize};

/// Whose records a call concerns: the whole hub (the operator's view, and the pipeline's), or
/// one application's (a provider's customer, who sees only what is theirs). Every service call
/// and every store call on records names its scope; a record outside it is not found.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub enum Scope {
    /// Every record of the hub: the operator's view, and the pipeline's.
    #[default]
    Hub,
    /// The records of one application, by its id (`app_…`).
    Application(std::sync::Arc<str>),
}

impl Scope {
    /// The scope of one application.
    pub fn application(id: &str) -> Self {
        Scope::Application(std::sync::Arc::from(id))
    }

    /// The application this scope is limited to; `None` for the whole hub.
    pub fn application_id(&self) -> Option<&str> {
        match self {
            Scope::Hub => None,
            Scope::Application(id) => Some(id),
        }
    }

    /// Whether a record owned by `owner` (`None`: the hub's own) is within this scope. The hub
    /// sees everything; an application only what it owns.
    pub fn includes(&self, owner: Option<&str>) -> bool {
        match self {
            Scope::Hub => true,
            Scope::Application(id) => owner == Some(&**id),
        }
    }
}

/// A problem with one field of a request.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }

    /// Every problem of a list as one line: `field: message`, joined by `; `.
    pub fn joined(errors: &[FieldError]) -> String {
        errors
            .iter()
            .map(|e| {
                if e.field.is_empty() {
                    e.message.clone()
                } else {
                    format!("{}: {}", e.field, e.message)
                }
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// Milliseconds since the Unix epoch: how every time is stored and compared.
pub type Millis = i64;

/// The current wall-clock time in Unix milliseconds.
pub fn now_ms() -> Millis {
    jiff::Timestamp::now().as_millisecond()
}

/// Formats Unix milliseconds as RFC 3339 UTC (`2026-01-29T10:30:00.123Z`).
pub fn rfc3339(ms: Millis) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// Parses an RFC 3339 time or a number of Unix seconds into Unix milliseconds.
pub fn parse_time(text: &str) -> Option<Millis> {
    if let Ok(secs) = text.parse::<i64>() {
        return secs.checked_mul(1000);
    }
    text.parse::<jiff::Timestamp>()
        .ok()
        .map(|t| t.as_millisecond())
}

/// A new time-ordered identifier with a type prefix (`evt_01J…`). Sorting ids sorts by creation
/// time, which is what cursor pagination relies on.
///
/// Ids made by this process are strictly increasing, even within one millisecond: a plain ULID
/// is random inside its millisecond, which would list two events of the same millisecond in
/// either order.
pub fn new_id(prefix: &str) -> String {
    static GENERATOR: std::sync::Mutex<ulid::Generator> =
        std::sync::Mutex::new(ulid::Generator::new());
    let id = GENERATOR
        .lock()
        .map(|mut g| g.generate())
        .ok()
        .and_then(Result::ok)
        // The random part overflowed within one millisecond (2^80 ids): fall back to a plain one.
        .unwrap_or_else(|| ulid::Ulid::from_datetime(std::time::SystemTime::now()));
    format!("{prefix}_{id}")
}

/// The smallest id with `prefix` created at or after `ms`: time filters over time-ordered ids
/// become id ranges, which needs no index on a time column.
pub fn id_floor(prefix: &str, ms: Millis) -> String {
    format!("{prefix}_{}", ulid::Ulid::from_parts(ms.max(0) as u64, 0))
}

/// The millisecond in which an id made by [`new_id`] was made.
pub fn id_time(id: &str) -> Option<Millis> {
    let (_, ulid) = id.split_once('_')?;
    let ms = ulid::Ulid::from_string(ulid).ok()?.timestamp_ms();
    Millis::try_from(ms).ok()
}

/// Id prefixes, so that an id says what it names.
/// The source name of the hub's own events (`endpoint.disabled`, `order.filled`, …).
pub const HUB_SOURCE: &str = "hub";

pub mod prefix {
    pub const EVENT: &str = "evt";
    pub const DELIVERY: &str = "dlv";
    pub const ENDPOINT: &str = "ep";
    pub const SOURCE: &str = "src";
    pub const ATTEMPT: &str = "att";
    pub const TOKEN: &str = "tok";
    pub const MESSAGE: &str = "msg";
    pub const ACCOUNT: &str = "acc";
    pub const ORDER: &str = "ord";
    pub const APPLICATION: &str = "app";
    pub const PORTAL: &str = "ptl";
}

/// The first integer in a JSON text that a JSON number cannot hold exactly (beyond the 64-bit
/// range it would become a float: `123456789012345678901234567890` read back as
/// `1.2345678901234568e+29`, a different number). Strings are skipped.
///
/// ```
/// use tradehook::domain::{exact_integers, inexact_integer};
/// assert_eq!(inexact_integer(br#"{"a": 123456789012345678901234567890}"#), Some("123456789012345678901234567890"));
/// assert_eq!(inexact_integer(br#"{"id": "123456789012345678901234567890", "n": 18446744073709551615, "f": 1.5e30}"#), None);
/// assert!(exact_integers(b"[1e999999999999999999999]").is_ok());
/// assert!(exact_integers(b"[-99999999999999999999]").unwrap_err().contains("send it as a string"));
/// ```
pub fn inexact_integer(json: &[u8]) -> Option<&str> {
    // Most bodies have no run of 20 digits at all: one quick pass says so.
    let mut run = 0;
    if !json.iter().any(|b| {
        run = if b.is_ascii_digit() { run + 1 } else { 0 };
        run >= 20
    }) {
        return None;
    }
    let mut i = 0;
    let mut in_string = false;
    while i < json.len() {
        let b = json[i];
        if in_string {
            match b {
                b'\\' => i += 1,
                b'"' => in_string = false,
                _ => {}
            }
            i += 1;
            continue;
        }
        if b == b'"' {
            in_string = true;
            i += 1;
            continue;
        }
        if b == b'-' || b.is_ascii_digit() {
            let start = i;
            while i < json.len()
                && matches!(json[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
            {
                i += 1;
            }
            let token = std::str::from_utf8(&json[start..i]).unwrap_or("");
            let integer = !token.contains(['.', 'e', 'E']);
            let exact = token
                .parse::<i128>()
                .is_ok_and(|n| n >= i128::from(i64::MIN) && n <= i128::from(u64::MAX));
            if integer && !exact {
                return Some(token);
            }
            continue;
        }
        i += 1;
    }
    None
}

/// Refuses a JSON text holding an integer JSON cannot keep exactly, saying what to do instead:
/// storing another number than the sender sent is worse than refusing it.
pub fn exact_integers(json: &[u8]) -> Result<(), String> {
    match inexact_integer(json) {
        Some(n) => Err(format!(
            "the number {n} is too large to keep exactly; send it as a string"
        )),
        None => Ok(()),
    }
}

/// Random bytes from the operating system's generator.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    rand::rng().fill_bytes(&mut bytes);
    bytes
}

/// A new signing secret in the Standard Webhooks form: `whsec_` and 32 random bytes in base64.
pub fn new_signing_secret() -> String {
    format!("whsec_{}", STANDARD.encode(random_bytes::<32>()))
}

/// A new URL-safe random token (for token-authenticated sources and API tokens). It starts
/// with a letter or digit: a token beginning with `-` is taken for a flag when pasted into a
/// command (`tradehook send --secret -Xa…`).
///
/// ```
/// let tokens: Vec<String> = (0..2000).map(|_| tradehook::domain::new_token("")).collect();
/// assert!(tokens.iter().all(|t| t.len() == 32 && t.starts_with(|c: char| c.is_ascii_alphanumeric())));
/// ```
pub fn new_token(prefix: &str) -> String {
    loop {
        let token = URL_SAFE_NO_PAD.encode(random_bytes::<24>());
        if token.starts_with(|c: char| c.is_ascii_alphanumeric()) {
            return format!("{prefix}{token}");
        }
    }
}

/// Characters allowed in an event type: letters, digits and `_ . : - /`.
fn is_type_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-' | '/')
}

/// An event type such as `entry`, `exit_fill` or `trade.new`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct EventType(String);

impl EventType {
    /// Validates an event type: 1 to 64 characters of letters, digits and `_ . : - /`.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() || text.len() > 64 {
            return Err("an event type has 1 to 64 characters".into());
        }
        if !text.chars().all(is_type_char) {
            return Err(format!(
                "event type {text:?} may only contain letters, digits and _ . : - /"
            ));
        }
        Ok(Self(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for EventType {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// What an endpoint subscribes to: an exact event type, or a pattern where `*` stands for any
/// run of characters (`entry*`, `trade.*`, `*`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(transparent)]
#[schema(value_type = String, pattern = r"^[A-Za-z0-9_.:/*-]{1,64}$", example = "entry*")]
pub struct EventTypePattern(String);

impl EventTypePattern {
    /// The pattern that matches every event type.
    pub fn all() -> Self {
        Self("*".into())
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() || text.len() > 64 {
            return Err("an event type pattern has 1 to 64 characters".into());
        }
        if !text.chars().all(|c| c == '*' || is_type_char(c)) {
            return Err(format!(
                "event type pattern {text:?} may only contain letters, digits, _ . : - / and *"
            ));
        }
        Ok(Self(text.to_owned()))
    }

    /// Whether `event_type` matches this pattern.
    ///
    /// ```
    /// use tradehook::domain::{EventType, EventTypePattern};
    /// let p = EventTypePattern::parse("entry*").unwrap();
    /// assert!(p.matches(&EventType::parse("entry_fill").unwrap()));
    /// assert!(!p.matches(&EventType::parse("exit").unwrap()));
    /// ```
    pub fn matches(&self, event_type: &EventType) -> bool {
        glob_match(self.0.as_bytes(), event_type.as_str().as_bytes())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for EventTypePattern {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Matches `text` against a pattern where `*` is any run of bytes; iterative, with the usual
/// single backtrack point, so it is linear in practice and never recursive.
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}

/// How deliveries to an endpoint are signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Signing {
    /// Standard Webhooks: `webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64>`.
    #[default]
    Standard,
    /// `X-Webhook-Signature: <hex HMAC-SHA256 of the body>`, keyed with the secret's text.
    HmacHex,
    /// No signature.
    None,
}

impl Signing {
    pub fn as_str(self) -> &'static str {
        match self {
            Signing::Standard => "standard",
            Signing::HmacHex => "hmac_hex",
            Signing::None => "none",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "standard" => Some(Signing::Standard),
            "hmac_hex" => Some(Signing::HmacHex),
            "none" => Some(Signing::None),
            _ => None,
        }
    }
}

/// What a status code means for a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Success,
    Retry,
    /// This delivery cannot succeed (a template that does not render, a message the service
    /// refuses): it fails now, without retries; the endpoint stays enabled.
    Fail,
    /// 410 Gone: the receiver says it will never accept again; disable the endpoint.
    Gone,
}

/// A request rate: `count` requests per `per_ms`, written `30/min`, `5/2s`, `1/s`, `100/h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub count: u32,
    pub per_ms: u64,
}

impl RateLimit {
    /// Reads `N/s`, `N/Ks`, `N/min`, `N/h`.
    ///
    /// ```
    /// use tradehook::domain::RateLimit;
    /// assert_eq!(RateLimit::parse("30/min"), Ok(RateLimit { count: 30, per_ms: 60_000 }));
    /// assert_eq!(RateLimit::parse("5/2s"), Ok(RateLimit { count: 5, per_ms: 2_000 }));
    /// assert!(RateLimit::parse("fast").is_err());
    /// ```
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = || format!("{text:?} is not a rate such as 30/min, 5/2s or 1/s");
        let (count, per) = text.trim().split_once('/').ok_or_else(bad)?;
        let count: u32 = count.trim().parse().map_err(|_| bad())?;
        let per = per.trim();
        let (n, unit) = per
            .find(|c: char| !c.is_ascii_digit())
            .map(|i| per.split_at(i))
            .ok_or_else(bad)?;
        let n: u64 = if n.is_empty() {
            1
        } else {
            n.parse().map_err(|_| bad())?
        };
        let unit_ms = match unit {
            "s" | "sec" => 1_000,
            "m" | "min" => 60_000,
            "h" => 3_600_000,
            _ => return Err(bad()),
        };
        if count == 0 || n == 0 {
            return Err(bad());
        }
        Ok(Self {
            count,
            per_ms: n * unit_ms,
        })
    }
}

impl std::fmt::Display for RateLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.per_ms {
            3_600_000 => write!(f, "{}/h", self.count),
            60_000 => write!(f, "{}/min", self.count),
            1_000 => write!(f, "{}/s", self.count),
            ms if ms % 1000 == 0 => write!(f, "{}/{}s", self.count, ms / 1000),
            ms => write!(f, "{}/{}s", self.count, ms as f64 / 1000.0),
        }
    }
}

impl Serialize for RateLimit {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for RateLimit {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        RateLimit::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl utoipa::PartialSchema for RateLimit {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some(r"^\s*\d+\s*/\s*\d*\s*(s|sec|m|min|h)\s*$"))
            .description(Some(
                "Requests per window: `30/min`, `5/2s`, `1/s`, `100/h`.",
            ))
            .examples(["30/min"])
            .into()
    }
}

impl utoipa::ToSchema for RateLimit {}

/// An error with its causes, as one line: they say what failed (a refused connection, a
/// certificate, a timeout).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ty(s: &str) -> EventType {
        EventType::parse(s).unwrap()
    }

    #[test]
    fn wildcard_patterns_match_as_globs() {
        let cases = [
            ("*", "entry", true),
            ("entry*", "entry", true),
            ("entry*", "entry_fill", true),
            ("entry*", "exit_fill", false),
            ("*_fill", "exit_fill", true),
            ("*_fill", "exit_fill_x", false),
            ("trade.*", "trade.new", true),
            ("trade.*", "trades.new", false),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("exit", "exit", true),
            ("exit", "exit_fill", false),
        ];
        for (pattern, event, expected) in cases {
            let p = EventTypePattern::parse(pattern).unwrap();
            assert_eq!(p.matches(&ty(event)), expected, "{pattern} vs {event}");
        }
    }

    #[test]
    fn event_types_reject_spaces_and_empty_names() {
        assert!(EventType::parse("").is_err());
        assert!(EventType::parse("entry fill").is_err());
        assert!(EventType::parse(&"x".repeat(65)).is_err());
        assert!(EventType::parse("trade.new").is_ok());
    }

    #[test]
    fn times_round_trip_through_rfc3339() {
        let ms = 1_769_682_600_123;
        assert_eq!(rfc3339(ms), "2026-01-29T10:30:00.123Z");
        assert_eq!(parse_time("2026-01-29T10:30:00.123Z"), Some(ms));
        assert_eq!(parse_time("1769682600"), Some(1_769_682_600_000));
        assert_eq!(parse_time("yesterday"), None);
    }

    #[test]
    fn id_floors_order_ids_by_time() {
        let before = id_floor(prefix::EVENT, now_ms() - 1);
        let id = new_id(prefix::EVENT);
        let after = id_floor(prefix::EVENT, now_ms() + 1);
        assert!(before <= id && id < after, "{before} {id} {after}");
    }

    #[test]
    fn ids_carry_their_prefix_and_increase_strictly() {
        let ids: Vec<String> = (0..10_000).map(|_| new_id(prefix::EVENT)).collect();
        assert!(ids[0].starts_with("evt_") && ids[0].len() == 30);
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "ids are strictly increasing"
        );
    }
}
