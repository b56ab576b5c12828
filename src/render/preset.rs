//! Presets for chat services: the request each one expects, default message texts per event
//! type, length limits, and how each says a request failed.
//!
//! | preset     | body                                                   | limit            |
//! |------------|--------------------------------------------------------|------------------|
//! | `discord`  | `{"content"}` or `{"embeds": [{title, colour, fields}]}` | 2000 characters (4096 in an embed) |
//! | `slack`    | `{"text"}`                                             | 40000 characters |
//! | `telegram` | `{"chat_id", "text", "parse_mode"}` (sendMessage)      | 4096 characters  |
//! | `dingtalk` | `{"msgtype": "markdown", "markdown": {title, text}}`   | 20000 bytes      |
//! | `wecom`    | `{"msgtype": "markdown", "markdown": {content}}`       | 4096 bytes       |
//! | `generic`  | `{"type", "text", "event"}`                            | none             |
//!
//! Texts longer than the limit are cut (ending in `…`) rather than rejected by the service.

use std::fmt::Write as _;

use base64::Engine as _;
use serde_json::{Value, json};

use super::pyfmt::{self, FormatError, Value as Py};
use super::{Context, ParseMode, Preset, RenderSpec, Rendered};

/// The default message of each event type: a title line, then lines that are left out when
/// a field they name is missing or null.
fn default_template(event_type: &str) -> Option<(&'static str, &'static [&'static str])> {
    const ENTRY: &[&str] = &[
        "Price: {price}",
        "Amount: {amount}",
        "Stake: {stake_amount} {stake_currency}",
        "Leverage: {leverage}x",
        "Tag: {enter_tag}",
        "Exchange: {exchange}",
    ];
    const EXIT: &[&str] = &[
        "Price: {close_rate}",
        "Profit: {profit_ratio:.2%}",
        "Profit amount: {profit_abs} {stake_currency}",
        "Reason: {exit_reason}",
        "Amount: {amount}",
        "Exchange: {exchange}",
    ];
    const CANCEL: &[&str] = &["Price: {price}", "Reason: {reason}"];
    const STATUS: &[&str] = &[];
    Some(match event_type {
        "entry" => ("🟢 Entry {side} {pair}", ENTRY),
        "entry_fill" => ("✅ Entry filled {side} {pair}", ENTRY),
        "entry_cancel" => ("⚪ Entry cancelled {side} {pair}", CANCEL),
        "exit" => ("🔴 Exit {side} {pair}", EXIT),
        "exit_fill" => ("🏁 Exit filled {side} {pair}", EXIT),
        "exit_cancel" => ("⚪ Exit cancelled {side} {pair}", CANCEL),
        "liquidation" => ("💥 Liquidated {side} {pair}", EXIT),
        "liquidation_warning" => (
            "⚠️ Liquidation risk {side} {pair}",
            &[
                "Price: {current_rate}",
                "Liquidation price: {liquidation_price}",
                "Margin left: {remaining_ratio:.0%}",
                "Leverage: {leverage}x",
            ],
        ),
        "status" | "startup" => ("ℹ️ {status}", STATUS),
        "warning" => ("⚠️ {status}", STATUS),
        "exception" => ("❗ {status}", STATUS),
        "strategy_msg" => ("💬 {msg}", STATUS),
        "endpoint.disabled" => (
            "⛔ Endpoint disabled",
            &["Endpoint: {endpoint_id}", "URL: {url}", "Reason: {reason}"],
        ),
        "protection_trigger" | "protection_trigger_global" => (
            "🔒 Trading paused {pair}",
            &["Until: {lock_end_time}", "Reason: {reason}"],
        ),
        _ => return None,
    })
}

impl Preset {
    /// The rate the service accepts from one webhook, used when the endpoint sets none:
    /// Discord 5 per 2 s, Slack 1/s, Telegram 20/min in a group, DingTalk and WeCom 20/min.
    pub fn default_rate_limit(self) -> Option<crate::domain::RateLimit> {
        let (count, per_ms) = match self {
            Preset::Discord => (5, 2_000),
            Preset::Slack => (1, 1_000),
            Preset::Telegram | Preset::Dingtalk | Preset::Wecom => (20, 60_000),
            // Cornix reads at most 7 signals a minute from a channel.
            Preset::Cornix => (7, 60_000),
            Preset::Generic | Preset::ThreeCommasSignal | Preset::ThreeCommasDca => return None,
        };
        Some(crate::domain::RateLimit { count, per_ms })
    }

    /// The most a message may hold, and whether it is counted in bytes.
    fn limit(self, spec: &RenderSpec) -> Option<(usize, bool)> {
        match self {
            Preset::Discord if spec.embed => Some((4096, false)),
            Preset::Discord => Some((2000, false)),
            Preset::Slack => Some((40_000, false)),
            Preset::Telegram => Some((4096, false)),
            Preset::Dingtalk => Some((20_000, true)),
            Preset::Wecom => Some((4096, true)),
            Preset::Cornix => Some((4096, false)),
            Preset::Generic | Preset::ThreeCommasSignal | Preset::ThreeCommasDca => None,
        }
    }

    fn parse_mode(self, spec: &RenderSpec) -> Option<ParseMode> {
        match self {
            Preset::Telegram => Some(spec.parse_mode.unwrap_or(ParseMode::Html)),
            _ => None,
        }
    }

    /// Escapes a value for the service's markup.
    fn escape(self, spec: &RenderSpec) -> impl Fn(&str, &mut String) {
        let mode = self.parse_mode(spec);
        move |text: &str, out: &mut String| match mode {
            Some(ParseMode::Html) => {
                for c in text.chars() {
                    match c {
                        '<' => out.push_str("&lt;"),
                        '>' => out.push_str("&gt;"),
                        '&' => out.push_str("&amp;"),
                        c => out.push(c),
                    }
                }
            }
            Some(ParseMode::MarkdownV2) => {
                for c in text.chars() {
                    if "_*[]()~`>#+-=|{}.!\\".contains(c) {
                        out.push('\\');
                    }
                    out.push(c);
                }
            }
            _ => out.push_str(text),
        }
    }

    /// Bold text in the service's markup.
    fn bold(self, spec: &RenderSpec, title: &str) -> String {
        match (self, self.parse_mode(spec)) {
            (Preset::Telegram, Some(ParseMode::Html)) => format!("<b>{title}</b>"),
            (Preset::Telegram, Some(ParseMode::MarkdownV2)) => format!("*{title}*"),
            (Preset::Telegram | Preset::Generic, _) => title.to_owned(),
            (Preset::ThreeCommasSignal | Preset::ThreeCommasDca | Preset::Cornix, _) => {
                title.to_owned()
            }
            (Preset::Discord, _) if spec.embed => title.to_owned(),
            (Preset::Discord | Preset::Wecom, _) => format!("**{title}**"),
            (Preset::Slack, _) => format!("*{title}*"),
            (Preset::Dingtalk, _) => format!("#### {title}"),
        }
    }

    fn line_break(self) -> &'static str {
        match self {
            // DingTalk's markdown needs a blank line to break a line.
            Preset::Dingtalk => "\n\n",
            _ => "\n",
        }
    }

    /// A user's message template, with values escaped for the service's markup.
    pub fn render_text(
        self,
        spec: &RenderSpec,
        template: &str,
        lookup: &dyn Fn(&str) -> Option<Py>,
    ) -> Result<String, FormatError> {
        pyfmt::format_escaped(template, lookup, &self.escape(spec))
    }

    /// The default title of an event (plain text, values escaped).
    fn title(self, spec: &RenderSpec, event_type: &str, ctx: &Context<'_>) -> String {
        let template = default_template(event_type).map_or("📨 {type}", |(t, _)| t);
        // A missing field in a title is left out rather than failing the message.
        let lookup = |name: &str| match ctx.get(name) {
            None | Some(Py::None) => Some(Py::Str(String::new())),
            found => found,
        };
        let text = pyfmt::format_escaped(template, &lookup, &self.escape(spec))
            .unwrap_or_else(|_| event_type.to_owned());
        text.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    /// The default lines of an event, each left out when it names a missing or null field.
    fn lines(self, spec: &RenderSpec, event_type: &str, ctx: &Context<'_>) -> Vec<String> {
        let lookup = |name: &str| match ctx.get(name) {
            Some(Py::None) => None,
            found => found,
        };
        match default_template(event_type) {
            Some((_, lines)) => lines
                .iter()
                .filter_map(|l| pyfmt::format_escaped(l, &lookup, &self.escape(spec)).ok())
                .collect(),
            None => ctx
                .scalars()
                .take(20)
                .map(|(k, v)| {
                    let text = match v {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    let mut line = String::new();
                    self.escape(spec)(&format!("{k}: {text}"), &mut line);
                    line
                })
                .collect(),
        }
    }

    /// The default message of an event.
    pub fn default_text(self, spec: &RenderSpec, event_type: &str, ctx: &Context<'_>) -> String {
        let mut text = self.bold(spec, &self.title(spec, event_type, ctx));
        for line in self.lines(spec, event_type, ctx) {
            text.push_str(self.line_break());
            text.push_str(&line);
        }
        text
    }

    /// The service's request around a message text.
    pub fn body(
        self,
        spec: &RenderSpec,
        event_type: &str,
        event: &Value,
        ctx: &Context<'_>,
        message: String,
    ) -> Rendered {
        let message = match self.limit(spec) {
            Some((max, bytes)) => truncate(&message, max, bytes, self.parse_mode(spec)),
            None => message,
        };
        let body = match self {
            Preset::Discord if spec.embed => {
                let mut embed = json!({
                    "title": truncate(&self.title(spec, event_type, ctx), 256, false, None),
                    "color": colour(event_type, ctx),
                    "fields": embed_fields(ctx),
                });
                // The default text repeats the title; an embed shows the lines only.
                let description = if spec.templates.is_empty() {
                    self.lines(spec, event_type, ctx).join("\n")
                } else {
                    message
                };
                if !description.is_empty() {
                    embed["description"] = Value::String(description);
                }
                if let Some(t) = event.get("timestamp") {
                    embed["timestamp"] = t.clone();
                }
                let mut body = json!({"embeds": [embed]});
                if let Some(name) = &spec.username {
                    body["username"] = Value::String(name.clone());
                }
                body
            }
            Preset::Discord => {
                let mut body = json!({"content": message});
                if let Some(name) = &spec.username {
                    body["username"] = Value::String(name.clone());
                }
                body
            }
            Preset::Slack => json!({"text": message}),
            Preset::Telegram => {
                let mut body = json!({"text": message, "disable_web_page_preview": true});
                if let Some(chat) = &spec.chat_id {
                    body["chat_id"] = Value::String(chat.clone());
                }
                match self.parse_mode(spec) {
                    Some(ParseMode::Html) => body["parse_mode"] = "HTML".into(),
                    Some(ParseMode::MarkdownV2) => body["parse_mode"] = "MarkdownV2".into(),
                    _ => {}
                }
                body
            }
            Preset::Dingtalk => json!({
                "msgtype": "markdown",
                "markdown": {"title": truncate(&self.title(spec, event_type, ctx), 64, false, None), "text": message},
            }),
            Preset::Wecom => json!({"msgtype": "markdown", "markdown": {"content": message}}),
            // A signal platform's body is built from the trade (`platform`), not a message.
            Preset::Generic
            | Preset::ThreeCommasSignal
            | Preset::ThreeCommasDca
            | Preset::Cornix => {
                json!({"type": event_type, "text": message, "event": event})
            }
        };
        Rendered {
            body: body.to_string().into_bytes(),
            content_type: "application/json",
            url: None,
        }
    }
}

/// Green for longs and profits, red for shorts and losses, grey for cancels, orange for
/// warnings, blue for the rest.
fn colour(event_type: &str, ctx: &Context<'_>) -> u32 {
    const GREEN: u32 = 0x2e_cc71;
    const RED: u32 = 0xe7_4c3c;
    const GREY: u32 = 0x95_a5a6;
    const ORANGE: u32 = 0xe6_7e22;
    const BLUE: u32 = 0x34_98db;
    let profit = ctx.raw("profit_ratio").and_then(Value::as_f64);
    let short = ctx.raw("side").and_then(Value::as_str) == Some("short");
    match event_type {
        t if t.ends_with("_cancel") => GREY,
        "exit" | "exit_fill" => match profit {
            Some(p) if p < 0.0 => RED,
            Some(_) => GREEN,
            None => BLUE,
        },
        "entry" | "entry_fill" if short => RED,
        "entry" | "entry_fill" => GREEN,
        "liquidation" | "exception" => RED,
        "warning" | "liquidation_warning" | "protection_trigger" | "protection_trigger_global" => {
            ORANGE
        }
        _ => BLUE,
    }
}

fn embed_fields(ctx: &Context<'_>) -> Vec<Value> {
    let mut fields = Vec::new();
    let mut add = |name: &str, value: Option<String>| {
        if let Some(value) = value.filter(|v| !v.is_empty()) {
            fields.push(
                json!({"name": name, "value": truncate(&value, 1024, false, None), "inline": true}),
            );
        }
    };
    let text = |name: &str| {
        ctx.get(name).and_then(|v| match v {
            Py::None => None,
            v => Some(pyfmt::str_of(&v)),
        })
    };
    add("Pair", text("pair"));
    add("Side", text("side"));
    add("Price", text("price"));
    add("Amount", text("amount"));
    add(
        "Profit",
        ctx.raw("profit_ratio").and_then(Value::as_f64).map(|p| {
            let mut s = String::new();
            let _ = pyfmt::format("{p:.2%}", &|_| Some(Py::Float(p))).map(|t| s.push_str(&t));
            if let Some(abs) = text("profit_abs") {
                let _ = write!(s, " ({abs}");
                if let Some(c) = text("stake_currency") {
                    let _ = write!(s, " {c}");
                }
                s.push(')');
            }
            s
        }),
    );
    add("Reason", text("exit_reason").or_else(|| text("reason")));
    add("Tag", text("enter_tag"));
    fields
}

/// Cuts `text` to at most `max` characters (or bytes), ending in `…`, without splitting a
/// character and, in Telegram HTML, closing the tags the cut left open.
pub fn truncate(text: &str, max: usize, bytes: bool, mode: Option<ParseMode>) -> String {
    let len = |s: &str| if bytes { s.len() } else { s.chars().count() };
    if len(text) <= max {
        return text.to_owned();
    }
    const ELLIPSIS: &str = "…";
    let budget =
        max.saturating_sub(len(ELLIPSIS) + if mode == Some(ParseMode::Html) { 32 } else { 0 });
    let mut cut = String::new();
    for c in text.chars() {
        let size = if bytes { c.len_utf8() } else { 1 };
        if len(&cut) + size > budget {
            break;
        }
        cut.push(c);
    }
    if mode == Some(ParseMode::Html) {
        // Drop a half-written tag or entity, then close what is still open.
        if let Some(lt) = cut.rfind('<')
            && !cut[lt..].contains('>')
        {
            cut.truncate(lt);
        }
        if let Some(amp) = cut.rfind('&')
            && !cut[amp..].contains(';')
        {
            cut.truncate(amp);
        }
        cut.push_str(ELLIPSIS);
        let mut open: Vec<String> = Vec::new();
        let mut rest = cut.as_str();
        while let Some(i) = rest.find('<') {
            let Some(j) = rest[i..].find('>') else { break };
            let tag = &rest[i + 1..i + j];
            if let Some(name) = tag.strip_prefix('/') {
                if let Some(pos) = open.iter().rposition(|t| t == name.trim()) {
                    open.remove(pos);
                }
            } else {
                let name = tag.split_whitespace().next().unwrap_or("").to_owned();
                if !name.is_empty() {
                    open.push(name);
                }
            }
            rest = &rest[i + j + 1..];
        }
        let mut closed = cut.clone();
        for name in open.iter().rev() {
            let _ = write!(closed, "</{name}>");
        }
        return closed;
    }
    cut.push_str(ELLIPSIS);
    cut
}

/// DingTalk's signed URL: `timestamp` (ms) and `sign` = url-encoded base64 of
/// HMAC-SHA256(secret, "timestamp\nsecret").
pub fn dingtalk_signed_url(url: &str, secret: &str, now_ms: i64) -> String {
    let to_sign = format!("{now_ms}\n{secret}");
    let mac = crate::security::sign::hmac_sha256(secret.as_bytes(), to_sign.as_bytes());
    let sign = base64::engine::general_purpose::STANDARD.encode(mac);
    let mut encoded = String::new();
    super::quote_plus(&sign, &mut encoded);
    let joiner = if url.contains('?') { '&' } else { '?' };
    format!("{url}{joiner}timestamp={now_ms}&sign={encoded}")
}

/// What a service's answer means.
#[derive(Debug, Clone, PartialEq)]
pub struct Judgement {
    pub verdict: crate::domain::Verdict,
    /// The service asked to wait this long before the next request.
    pub retry_after_ms: Option<u64>,
    pub error: Option<String>,
}

/// Judges a service's answer. DingTalk and WeCom answer 200 with an `errcode`; Discord and
/// Telegram put `retry_after` in a 429's JSON body; a malformed message, a wrong key or a
/// deleted webhook (400, 401, 403, 404) fails at once: trying again cannot help.
pub fn judge(preset: Preset, status: u16, body: &str) -> Option<Judgement> {
    use crate::domain::Verdict;
    let json: Option<Value> = serde_json::from_str(body).ok();
    match preset {
        Preset::Dingtalk | Preset::Wecom if (200..300).contains(&status) => {
            let code = json
                .as_ref()
                .and_then(|j| j.get("errcode"))
                .and_then(Value::as_i64);
            let message = json
                .as_ref()
                .and_then(|j| j.get("errmsg"))
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            Some(match code {
                Some(0) => Judgement {
                    verdict: Verdict::Success,
                    retry_after_ms: None,
                    error: None,
                },
                // Sending too fast: DingTalk 130101 (and 410100), WeCom 45009.
                Some(c @ (130101 | 410100 | 45009)) => Judgement {
                    verdict: Verdict::Retry,
                    retry_after_ms: Some(60_000),
                    error: Some(format!("rate limited (errcode {c}: {message})")),
                },
                Some(c) => Judgement {
                    verdict: Verdict::Fail,
                    retry_after_ms: None,
                    error: Some(format!(
                        "the service refused the message (errcode {c}: {message})"
                    )),
                },
                None => Judgement {
                    verdict: Verdict::Retry,
                    retry_after_ms: None,
                    error: Some("HTTP 200 without an errcode".into()),
                },
            })
        }
        Preset::Telegram | Preset::Cornix if (200..300).contains(&status) => {
            match json
                .as_ref()
                .and_then(|j| j.get("ok"))
                .and_then(Value::as_bool)
            {
                Some(false) => Some(Judgement {
                    verdict: Verdict::Fail,
                    retry_after_ms: None,
                    error: Some(format!("Telegram said: {body}")),
                }),
                _ => None,
            }
        }
        Preset::Discord | Preset::Telegram | Preset::Slack | Preset::Cornix if status == 429 => {
            let secs = json.as_ref().and_then(|j| {
                j.get("retry_after")
                    .or_else(|| j.pointer("/parameters/retry_after"))
                    .and_then(Value::as_f64)
            });
            Some(Judgement {
                verdict: Verdict::Retry,
                retry_after_ms: secs
                    .filter(|s| s.is_finite() && *s >= 0.0)
                    .map(|s| (s * 1000.0).ceil() as u64),
                error: Some("HTTP 429 (rate limited)".into()),
            })
        }
        Preset::Discord
        | Preset::Telegram
        | Preset::Slack
        | Preset::Dingtalk
        | Preset::Wecom
        | Preset::Cornix
        | Preset::ThreeCommasSignal
        | Preset::ThreeCommasDca
            if matches!(status, 400 | 401 | 403 | 404) =>
        {
            Some(Judgement {
                verdict: Verdict::Fail,
                retry_after_ms: None,
                error: Some(format!(
                    "HTTP {status}: the service refused the message or the webhook (not retried)"
                )),
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Verdict;

    #[test]
    fn truncation_respects_characters_bytes_and_html() {
        assert_eq!(truncate("abcdef", 4, false, None), "abc…");
        assert_eq!(truncate("ééé", 5, true, None), "é…");
        let cut = truncate(
            &format!("<b>{}</b>", "x".repeat(100)),
            50,
            false,
            Some(ParseMode::Html),
        );
        assert!(cut.ends_with("…</b>"), "{cut}");
        assert!(cut.chars().count() <= 50);
    }

    #[test]
    fn telegram_markdown_v2_escapes_every_reserved_character_in_values() {
        let spec = RenderSpec {
            preset: Some(Preset::Telegram),
            parse_mode: Some(ParseMode::MarkdownV2),
            chat_id: Some("1".into()),
            ..RenderSpec::default()
        };
        let lookup = |_: &str| Some(Py::Str("rsi_cross (1.5)!".into()));
        let text = Preset::Telegram
            .render_text(&spec, "*{enter_tag}*", &lookup)
            .unwrap();
        assert_eq!(text, "*rsi\\_cross \\(1\\.5\\)\\!*");
    }

    #[test]
    fn dingtalk_signature_is_url_encoded_base64_hmac() {
        // HMAC-SHA256("SECabc", "1700000000000\nSECabc"), base64, url-encoded.
        let url = dingtalk_signed_url(
            "https://oapi.dingtalk.com/robot/send?access_token=t",
            "SECabc",
            1_700_000_000_000,
        );
        // The value DingTalk's own Python sample computes for this timestamp and secret.
        assert_eq!(
            url,
            "https://oapi.dingtalk.com/robot/send?access_token=t&timestamp=1700000000000\
             &sign=jcUpW0QmtKduN03n4JqQ0PBosVjqnM8gU7fIIvsDmCM%3D"
        );
    }

    #[test]
    fn answers_are_judged_per_service() {
        let j = judge(
            Preset::Dingtalk,
            200,
            r#"{"errcode":130101,"errmsg":"send too fast"}"#,
        )
        .unwrap();
        assert_eq!(
            (j.verdict, j.retry_after_ms),
            (Verdict::Retry, Some(60_000))
        );
        let j = judge(
            Preset::Wecom,
            200,
            r#"{"errcode":93000,"errmsg":"invalid webhook url"}"#,
        )
        .unwrap();
        assert_eq!(j.verdict, Verdict::Fail);
        assert_eq!(
            judge(Preset::Wecom, 200, r#"{"errcode":0,"errmsg":"ok"}"#)
                .unwrap()
                .verdict,
            Verdict::Success
        );
        let j = judge(
            Preset::Discord,
            429,
            r#"{"retry_after": 1.5, "global": false}"#,
        )
        .unwrap();
        assert_eq!(j.retry_after_ms, Some(1500));
        let j = judge(
            Preset::Telegram,
            429,
            r#"{"ok":false,"error_code":429,"parameters":{"retry_after":7}}"#,
        )
        .unwrap();
        assert_eq!(j.retry_after_ms, Some(7000));
        assert_eq!(
            judge(Preset::Discord, 404, "").unwrap().verdict,
            Verdict::Fail
        );
        assert!(judge(Preset::Discord, 204, "").is_none());
        assert!(judge(Preset::Slack, 503, "").is_none());
    }
}
