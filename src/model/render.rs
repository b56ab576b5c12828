//! How an endpoint's request is made, as stored with it: the preset, the templates and their
//! encoding. Plain data; rendering it is [`crate::render`]'s work.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How an endpoint's request body is made. Stored as JSON with the endpoint; clients write
/// these settings through the endpoint's own fields, which refuse unknown names.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RenderSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<Preset>,
    /// `json`, `form` or `raw`; JSON when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<BodyFormat>,
    /// Event type (or `*`) → template.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub templates: BTreeMap<String, Value>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub json_style: JsonStyle,
    /// Telegram: the chat to send to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat_id: Option<String>,
    /// Telegram: `HTML` (default), `MarkdownV2` or `none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parse_mode: Option<ParseMode>,
    /// DingTalk: the robot's signing secret (`SEC…`); the URL gets `timestamp` and `sign`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sign_secret: Option<String>,
    /// Discord: send an embed (title, colour, fields) instead of plain content.
    #[serde(default, skip_serializing_if = "is_default")]
    pub embed: bool,
    /// Discord: the name the message is posted under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// The body when there is no preset or template: the hub's event, or the subscription
    /// API's `{id, type, created, data}`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub envelope: Envelope,
}

/// The body of an event sent as it is, without a preset or a template.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Envelope {
    /// The stored event: `{id, type, timestamp, source, data}` (and `labels` when given).
    #[default]
    Event,
    /// As signal providers' subscription APIs send it: `{id, type, created, data}`, `created`
    /// in Unix seconds.
    Subscription,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// The encoding of a templated body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BodyFormat {
    #[default]
    Json,
    Form,
    Raw,
}

/// How JSON bodies are written: compact, or as Python's `json.dumps` writes them (what
/// Freqtrade sends: `", "` and `": "` separators, non-ASCII escaped, floats as Python prints them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JsonStyle {
    #[default]
    Compact,
    Python,
}

/// Telegram's text markup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum ParseMode {
    #[serde(rename = "HTML", alias = "html")]
    Html,
    #[serde(rename = "MarkdownV2", alias = "markdownv2", alias = "markdown_v2")]
    MarkdownV2,
    #[serde(rename = "none")]
    None,
}

/// A chat service or generic webhook whose request shape the hub knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Preset {
    Discord,
    Slack,
    Telegram,
    Dingtalk,
    Wecom,
    Generic,
}
