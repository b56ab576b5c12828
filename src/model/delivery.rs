//! Deliveries and their attempts: what is created with an event, what the dispatcher holds,
//! what an attempt records, and what the delivery log shows.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::domain::Millis;

/// A delivery of one event to one endpoint, to be created with the event.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub id: String,
    pub endpoint_id: String,
    /// Deliveries with the same key are made one after another, in id (event) order.
    pub order_key: Option<String>,
}

/// Who holds a piece of work, and until when.
#[derive(Debug, Clone)]
pub struct Lease {
    pub owner: Arc<str>,
    pub until: Millis,
}

/// A delivery ready to be attempted: what the dispatcher holds in memory.
#[derive(Debug, Clone)]
pub struct DeliveryJob {
    pub delivery_id: String,
    pub event_id: String,
    pub endpoint_id: String,
    pub event_type: String,
    pub body: Arc<str>,
    /// Attempts made since the delivery was created or last retried by hand.
    pub tries: u32,
    pub event_created_at: Millis,
}

/// Delivery status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    Pending,
    Succeeded,
    Failed,
    Cancelled,
    /// Not made within the endpoint's `max_age` of its event, so not sent.
    Expired,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Succeeded => "succeeded",
            DeliveryStatus::Failed => "failed",
            DeliveryStatus::Cancelled => "cancelled",
            DeliveryStatus::Expired => "expired",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "pending" => Some(Self::Pending),
            "succeeded" => Some(Self::Succeeded),
            "failed" => Some(Self::Failed),
            "cancelled" => Some(Self::Cancelled),
            "expired" => Some(Self::Expired),
            _ => None,
        }
    }
}

/// One attempt to send a delivery.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Attempt {
    pub id: String,
    pub delivery_id: String,
    #[serde(skip)]
    pub attempted_at: Millis,
    pub status_code: Option<u16>,
    pub duration_ms: u64,
    pub error_kind: Option<String>,
    pub error: Option<String>,
    /// The first 4 KiB of the response body.
    pub response_body: String,
}

/// What becomes of a delivery after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextStep {
    Done,
    RetryAt(Millis),
    Failed,
    /// Too old to be sent: the endpoint's `max_age` has passed.
    Expired,
}

/// The result of an attempt, to be recorded with the delivery's new state in one write.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    pub attempt: Attempt,
    pub next: NextStep,
    /// The endpoint answered 410 Gone: disable it with this reason.
    pub disable_endpoint: Option<String>,
    pub endpoint_id: String,
    /// What the attempt says of the endpoint's health.
    pub health: Health,
    /// Disable the endpoint after this many consecutive failures spanning at least this long.
    pub auto_disable: Option<(u32, Millis)>,
}

impl AttemptRecord {
    /// The delivery's state after this attempt: its status, when it is next due (or was
    /// finished), and its `last_error` (`kind: error`).
    pub fn delivery_state(&self) -> (&'static str, Millis, Option<String>) {
        let a = &self.attempt;
        let (status, next_at) = match self.next {
            NextStep::Done => ("succeeded", a.attempted_at),
            NextStep::Failed => ("failed", a.attempted_at),
            NextStep::Expired => ("expired", a.attempted_at),
            NextStep::RetryAt(at) => ("pending", at),
        };
        let last_error = a.error.as_ref().map(|e| match &a.error_kind {
            Some(kind) => format!("{kind}: {e}"),
            None => e.clone(),
        });
        (status, next_at, last_error)
    }

    /// Whether this attempt disables its endpoint, given the endpoint's failure streak after
    /// it: a 410 Gone does at once, a failure does once the streak is long enough in count and
    /// in time.
    pub fn disables(&self, streak: u32, failing_since: Option<Millis>) -> Option<Disabled> {
        if let Some(reason) = &self.disable_endpoint {
            return Some(Disabled {
                reason: reason.clone(),
                failures: streak,
                failing_since,
            });
        }
        let (Some((failures, span)), Some(since)) = (self.auto_disable, failing_since) else {
            return None;
        };
        (self.health == Health::Failure
            && streak >= failures
            && self.attempt.attempted_at - since >= span)
            .then(|| Disabled {
                reason: format!(
                    "{streak} consecutive failed attempts since {}",
                    crate::domain::rfc3339(since)
                ),
                failures: streak,
                failing_since: Some(since),
            })
    }
}

/// What an attempt says of its endpoint: it works, it failed, or nothing (a 429, a template
/// that could not render, an expired delivery).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Success,
    Failure,
    Neutral,
}

/// What recording an attempt did besides.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Recorded {
    /// The endpoint was disabled: why, after how many consecutive failures, failing since when.
    pub disabled: Option<Disabled>,
}

/// An endpoint the hub disabled.
#[derive(Debug, Clone, PartialEq)]
pub struct Disabled {
    pub reason: String,
    pub failures: u32,
    pub failing_since: Option<Millis>,
}

/// A delivery as the API shows it.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub id: String,
    pub event_id: String,
    pub endpoint_id: String,
    pub status: DeliveryStatus,
    pub attempts: u32,
    pub next_attempt_at: Option<Millis>,
    pub last_status_code: Option<u16>,
    pub last_error: Option<String>,
    pub created_at: Millis,
    pub updated_at: Millis,
}

/// Filters and cursor for listing deliveries, newest first.
#[derive(Debug, Clone, Default)]
pub struct DeliveryFilter {
    pub endpoint_id: Option<String>,
    pub event_id: Option<String>,
    pub status: Option<DeliveryStatus>,
    pub before: Option<String>,
    pub limit: u32,
}
