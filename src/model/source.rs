//! How a source's requests are checked and read, as stored with it: its format, its
//! authentication, its allow-list, dedupe field, mapping and rate. Plain data; reading
//! requests with it is [`crate::ingest`]'s work.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::domain::Millis;
use crate::security::sign::SignatureEncoding;

/// Where events come from: a named inbound URL with its authentication and payload format.
#[derive(Debug, Clone, PartialEq)]
pub struct Source {
    pub id: String,
    pub name: String,
    pub spec: SourceSpec,
    pub secret: Option<String>,
    pub created_at: Millis,
    pub updated_at: Millis,
}

/// Everything that describes how a source's requests are checked and read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceSpec {
    #[serde(default)]
    pub format: Format,
    pub auth: AuthSpec,
    /// Addresses allowed to send; empty means any.
    #[serde(default, with = "cidr_list")]
    pub ip_allowlist: Vec<IpNet>,
    /// A body field (a name, or a JSON pointer such as `/meta/id`) holding the sender's own
    /// id for the event, used as the dedupe key when no id header is sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedupe_field: Option<String>,
    /// For the `json` format: where the canonical fields are and what the type names mean.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mapping: Option<Mapping>,
    /// Requests accepted per window, over all senders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<crate::domain::RateLimit>,
}

/// The addresses TradingView sends alerts from; `"tradingview"` in an allow-list stands for them.
pub const TRADINGVIEW_ADDRESSES: [&str; 4] = [
    "52.89.214.238",
    "34.212.75.30",
    "54.218.53.128",
    "52.32.178.7",
];

/// Parses a CIDR (`10.0.0.0/8`) or a single address (`52.89.214.238`).
pub fn parse_cidr(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    if let Ok(net) = text.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    text.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("{text:?} is not an IP address or CIDR"))
}

mod cidr_list {
    use ipnet::IpNet;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(nets: &[IpNet], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(nets.iter().map(|n| n.to_string()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpNet>, D::Error> {
        let mut nets = Vec::new();
        for text in Vec::<String>::deserialize(d)? {
            if text.trim().eq_ignore_ascii_case("tradingview") {
                nets.extend(
                    super::TRADINGVIEW_ADDRESSES
                        .iter()
                        .map(|a| super::parse_cidr(a).expect("a valid address")),
                );
            } else {
                nets.push(super::parse_cidr(&text).map_err(serde::de::Error::custom)?);
            }
        }
        Ok(nets)
    }
}

/// A source's authentication.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum AuthSpec {
    /// HMAC-SHA256 of the raw body in a header, keyed with the secret's text.
    Hmac {
        #[serde(default = "default_signature_header")]
        header: String,
        #[serde(default)]
        encoding: SignatureEncoding,
    },
    /// Standard Webhooks headers, keyed with the `whsec_` secret.
    StandardWebhooks,
    /// The secret as a token: in the path (`/in/{source}/{token}`), as `?token=`, or in the
    /// named body field (removed before the payload is stored).
    Token {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        field: Option<String>,
    },
    /// No authentication (use with an IP allow-list).
    None,
}

fn default_signature_header() -> String {
    "X-Signature".into()
}

/// A source's payload format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    #[default]
    Json,
    Freqtrade,
    Tradingview,
    Copytrade,
    Envelope,
    /// Commands to the hub itself (`{"command": "halt", "account": "main"}`), executed as
    /// they arrive; only from a signed source.
    Command,
}

/// Where a generic JSON sender keeps the canonical fields, and what its type names mean.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Mapping {
    /// Canonical field name → JSON pointer into the payload (`"pair": "/instrument/name"`).
    /// `type` and `id` are read this way too.
    #[serde(default)]
    pub fields: BTreeMap<String, String>,
    /// The sender's type name → a canonical type (`"NEW_ORDER": "entry"`). When given, a type
    /// not listed (and not canonical already) is refused.
    #[serde(default)]
    pub types: BTreeMap<String, String>,
}
