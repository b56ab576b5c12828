//! Applications (provider mode): a signal provider's customers. Each has its own API keys,
//! endpoints and deliveries, invisible to every other application; the operator sees them all.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::domain::{Millis, RateLimit, Signing};

/// One customer of a provider.
#[derive(Debug, Clone, PartialEq)]
pub struct Application {
    /// `app_…`.
    pub id: String,
    /// The provider's own id for this customer, usable wherever the id is.
    pub uid: Option<String>,
    pub name: String,
    pub settings: ApplicationSettings,
    pub created_at: Millis,
    pub updated_at: Millis,
}

/// What an application carries beside its names: the provider's metadata, its quotas and the
/// rate of its API calls.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ApplicationSettings {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    #[serde(default)]
    pub quotas: Quotas,
    /// At most this many API calls with the application's keys in this window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// How the endpoints made through the subscription API (`/api/webhooks`) are signed:
    /// `hmac_hex` (`X-Webhook-Signature`, the default) or `standard` (Standard Webhooks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscription_signing: Option<Signing>,
}

/// What an application may hold and receive. Left out, there is no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Quotas {
    /// Endpoints it may have at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1)]
    pub max_endpoints: Option<u32>,
    /// Events delivered to it per UTC day; beyond it, its endpoints get no more that day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1)]
    pub events_per_day: Option<u64>,
    /// Seconds its deliveries are kept (86400 is a day), when that is less than the hub's
    /// own retention: older finished ones are deleted with their attempts, and so are the
    /// events left with no delivery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1)]
    pub retention: Option<u64>,
}

/// A one-time link into an application's customer portal. Only its token's hash is kept.
#[derive(Debug, Clone, PartialEq)]
pub struct PortalLink {
    pub id: String,
    pub application_id: String,
    pub token_hash: String,
    /// The portal it opens may only read.
    pub read_only: bool,
    pub expires_at: Millis,
    pub used_at: Option<Millis>,
    pub created_at: Millis,
}

impl Application {
    /// Whether `key` names this application: its id or its uid.
    pub fn is_named(&self, key: &str) -> bool {
        self.id == key || self.uid.as_deref() == Some(key)
    }
}
