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
    /// A signal platform's token: the 3Commas Signal Bot's `secret`, or the 3Commas DCA
    /// bot's `email_token`. Write-only: sealed at rest, never shown again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// 3Commas Signal Bot: the bot's `bot_uuid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bot_uuid: Option<String>,
    /// 3Commas DCA bot: the bot's `bot_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bot_id: Option<String>,
    /// 3Commas Signal Bot: `max_lag`, the seconds after the signal within which the bot
    /// still acts on it (default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_lag: Option<u32>,
    /// 3Commas DCA bot: `delay_seconds` before the bot acts (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_seconds: Option<u32>,
    /// The exchange as the platform names it: the Signal Bot's `tv_exchange` (default the
    /// event's exchange, upper case), Cornix's `Exchange:` line (left out by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exchange: Option<String>,
    /// A pair (`BTC/USDT`) → the platform's name for it, where the derived one is not right
    /// (`BTCUSDT.P`, `USDT_BTC` and `BTC/USDT` are derived).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pairs: BTreeMap<String, String>,
    /// 3Commas Signal Bot: send the signal's amount as the `order` (else the bot's own
    /// order size is used).
    #[serde(default, skip_serializing_if = "is_default")]
    pub signal_amount: bool,
    /// Cornix: the stop, this far from the entry in percent, when the signal has no
    /// `stop_loss` price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_loss_percent: Option<f64>,
    /// Cornix: the take-profit, this far from the entry in percent, when the signal has no
    /// `take_profit` price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub take_profit_percent: Option<f64>,
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

/// A chat service, a signal platform or a generic webhook whose request shape the hub knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Preset {
    Discord,
    Slack,
    Telegram,
    Dingtalk,
    Wecom,
    Generic,
    /// The 3Commas Signal Bot's webhook (`enter_long`, `exit_long`, …).
    #[serde(rename = "3commas_signal")]
    ThreeCommasSignal,
    /// A 3Commas DCA bot's TradingView command (start a deal, close at market).
    #[serde(rename = "3commas_dca")]
    ThreeCommasDca,
    /// Cornix's text signal, to the Telegram channel Cornix follows or as plain text.
    Cornix,
}

impl Preset {
    /// The name it is written with.
    pub fn as_str(self) -> &'static str {
        match self {
            Preset::Discord => "discord",
            Preset::Slack => "slack",
            Preset::Telegram => "telegram",
            Preset::Dingtalk => "dingtalk",
            Preset::Wecom => "wecom",
            Preset::Generic => "generic",
            Preset::ThreeCommasSignal => "3commas_signal",
            Preset::ThreeCommasDca => "3commas_dca",
            Preset::Cornix => "cornix",
        }
    }

    /// A signal platform: its body is built from the event's trade fields, not a message.
    pub fn is_platform(self) -> bool {
        matches!(
            self,
            Preset::ThreeCommasSignal | Preset::ThreeCommasDca | Preset::Cornix
        )
    }

    /// The event types a signal platform acts on; `None` for the others.
    pub fn platform_types(self) -> Option<&'static [&'static str]> {
        match self {
            Preset::ThreeCommasSignal | Preset::ThreeCommasDca => Some(&["entry", "exit"]),
            Preset::Cornix => Some(&["entry"]),
            _ => None,
        }
    }
}
