//! An endpoint: where deliveries go, with what it subscribes to, how requests are signed and
//! made, and when deliveries may be made.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::domain::{EventType, EventTypePattern, Millis, RateLimit, Signing};
use crate::model::labels::{LabelFilter, Labels};
use crate::model::render::RenderSpec;

/// Where deliveries go: a URL plus what it subscribes to and how requests are signed.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    pub id: String,
    /// The application it belongs to; `None` for the operator's own.
    pub application_id: Option<String>,
    pub url: String,
    pub description: String,
    pub event_types: Vec<EventTypePattern>,
    /// The labels its events must have (see [`LabelFilter`]); empty, any.
    pub labels: LabelFilter,
    pub headers: BTreeMap<String, String>,
    pub signing: Signing,
    pub secret: String,
    pub enabled: bool,
    pub disabled_reason: Option<String>,
    /// Delay before each retry, in milliseconds; its length is the number of retries.
    pub retry_schedule_ms: Vec<u64>,
    pub timeout_ms: u64,
    pub created_at: Millis,
    pub updated_at: Millis,
    /// How the request body is made from the event.
    pub render: RenderSpec,
    pub policy: DeliveryPolicy,
    /// After a rotation: the previous secret, which still signs until the given time.
    pub previous_secret: Option<(String, Millis)>,
}

/// When and how an endpoint's deliveries may be made.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct DeliveryPolicy {
    /// A delivery not made within this long of its event is `expired` instead of sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age_ms: Option<u64>,
    /// Deliveries with the same key go out strictly in event order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ordering: Option<Ordering>,
    /// At most this many requests in this window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// At most this many requests at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u32>,
    /// For an order destination (`url` is `account:<id>`): what it trades and how much.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orders: Option<crate::model::order::OrderRoute>,
}

/// What ordered delivery keys on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Ordering {
    /// One sequence per pair: a follower never sees an exit before its entry.
    Pair,
    /// One sequence for the whole endpoint.
    Endpoint,
}

impl Endpoint {
    /// The rate limit in force: the endpoint's own, or else its preset's service limit.
    pub fn rate_limit(&self) -> Option<RateLimit> {
        self.policy
            .rate_limit
            .or_else(|| self.render.preset.and_then(|p| p.default_rate_limit()))
    }

    /// Whether this endpoint wants events of `event_type`.
    pub fn subscribes_to(&self, event_type: &EventType) -> bool {
        self.event_types.iter().any(|p| p.matches(event_type))
    }

    /// Whether this endpoint wants an event of `event_type` with `labels`.
    pub fn wants(&self, event_type: &EventType, labels: &Labels) -> bool {
        self.subscribes_to(event_type) && self.labels.matches(labels)
    }
}

#[cfg(test)]
impl Endpoint {
    /// An enabled endpoint `id` to `https://example.test/<id>`, for the unit tests of the
    /// layers that store and send endpoints (each changes what its test is about).
    pub fn example(id: &str) -> Self {
        Self {
            id: id.into(),
            application_id: None,
            url: format!("https://example.test/{id}"),
            description: String::new(),
            event_types: Vec::new(),
            labels: Default::default(),
            headers: Default::default(),
            signing: Default::default(),
            secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into(),
            enabled: true,
            disabled_reason: None,
            retry_schedule_ms: vec![1000],
            timeout_ms: 1000,
            created_at: 0,
            updated_at: 0,
            render: Default::default(),
            policy: Default::default(),
            previous_secret: None,
        }
    }
}

/// The scheme of an order destination's `url`: `account:<account id>`.
pub const ACCOUNT_SCHEME: &str = "account:";

impl Endpoint {
    /// The account an order destination places its orders with.
    pub fn account_id(&self) -> Option<&str> {
        self.url.strip_prefix(ACCOUNT_SCHEME)
    }
}
