//! Render: the request an endpoint receives for an event.
//!
//! Without a preset or templates an endpoint receives the canonical event JSON as it was
//! stored. Templates are Python `str.format` strings ([`pyfmt`]), as Freqtrade users write
//! them, keyed by event type (`"*"` for any other type):
//!
//! - body format `json`: the template is a JSON object (or array); each string leaf is rendered,
//!   other leaves are kept, as Freqtrade does;
//! - `form`: an object of strings, sent url-encoded;
//! - `raw`: one text template (or Freqtrade's `{"data": "…"}`), sent as text/plain.
//!
//! A [`Preset`] (Discord, Slack, Telegram, DingTalk, WeCom, generic) builds the service's own
//! request around a message text, with default texts per event type, the service's length
//! limits and its way of saying that a request failed (see [`preset`]). A signal platform's
//! preset (3Commas' Signal Bot and DCA bots, Cornix) builds its request from the event's
//! trade fields instead (see [`platform`]).
//!
//! Rendering is pure: it fails with a [`RenderError`] (a missing field, a numeric spec on a
//! null value) and the delivery attempt records it instead of sending anything.

pub mod freqtrade;
pub mod platform;
pub mod preset;
pub mod pyfmt;

use std::fmt::Write as _;

use serde_json::Value;

pub use crate::model::render::{BodyFormat, Envelope, JsonStyle, ParseMode, Preset, RenderSpec};
use pyfmt::Value as Py;

/// Why an event could not be rendered for an endpoint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("template for {event_type}: {message}")]
pub struct RenderError {
    pub event_type: String,
    pub message: String,
}

/// A rendered request.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    pub body: Vec<u8>,
    pub content_type: &'static str,
    /// The URL to send to, when rendering changed it (DingTalk's signature).
    pub url: Option<String>,
}

impl RenderSpec {
    /// Whether the endpoint receives the canonical event unchanged.
    pub fn is_canonical(&self) -> bool {
        self.preset.is_none() && self.templates.is_empty() && self.envelope == Envelope::Event
    }

    /// Checks a spec; each problem as (field, message).
    pub fn validate(&self, url: &str) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        let mut template_bytes = 0;
        let format = self.format.unwrap_or_default();
        if self.preset.is_some() && format != BodyFormat::Json {
            problems.push((
                "format".into(),
                "a preset sends JSON; leave the format out".into(),
            ));
        }
        for (event_type, template) in &self.templates {
            let field = format!("templates.{event_type}");
            if event_type != "*" && crate::domain::EventType::parse(event_type).is_err() {
                problems.push((field.clone(), "not an event type (or \"*\")".into()));
            }
            let shape_ok = match (self.preset.is_some(), format, template) {
                (true, _, Value::String(_) | Value::Object(_)) => true,
                (false, BodyFormat::Json, Value::Object(_) | Value::Array(_)) => true,
                (false, BodyFormat::Form, Value::Object(o)) => {
                    o.values().all(|v| !v.is_object() && !v.is_array())
                }
                (false, BodyFormat::Raw, Value::String(_)) => true,
                (false, BodyFormat::Raw, Value::Object(o)) => {
                    o.len() == 1 && o.get("data").is_some_and(Value::is_string)
                }
                _ => false,
            };
            if !shape_ok {
                let expected = match (self.preset.is_some(), format) {
                    (true, _) => "the message text (a string), or a whole JSON body (an object)",
                    (false, BodyFormat::Json) => "a JSON object whose strings are templates",
                    (false, BodyFormat::Form) => "an object of field names to text templates",
                    (false, BodyFormat::Raw) => "a text template (or {\"data\": template})",
                };
                problems.push((field.clone(), format!("must be {expected}")));
                continue;
            }
            let mut texts = Vec::new();
            collect_strings(template, &mut texts);
            template_bytes += texts.iter().map(|t| t.len()).sum::<usize>();
            let mut budget = pyfmt::MAX_OUTPUT;
            for text in texts {
                if let Err(e) = check_template(text, &mut budget) {
                    problems.push((field.clone(), e));
                    break;
                }
            }
        }
        if template_bytes > MAX_TEMPLATE_BYTES {
            problems.push((
                "templates".into(),
                format!("the templates hold {template_bytes} bytes of text; at most {MAX_TEMPLATE_BYTES} are allowed"),
            ));
        }
        if self.preset == Some(Preset::Telegram)
            && self.chat_id.as_deref().is_none_or(str::is_empty)
            && !url.contains("chat_id=")
        {
            problems.push((
                "chat_id".into(),
                "Telegram needs the chat to send to (chat_id)".into(),
            ));
        }
        if !matches!(self.preset, Some(Preset::Telegram | Preset::Cornix)) && self.chat_id.is_some()
        {
            problems.push((
                "chat_id".into(),
                "chat_id belongs to the telegram and cornix presets".into(),
            ));
        }
        if self.preset != Some(Preset::Telegram) && self.parse_mode.is_some() {
            problems.push((
                "parse_mode".into(),
                "parse_mode belongs to the telegram preset".into(),
            ));
        }
        self.validate_platform(&mut problems);
        if self.preset != Some(Preset::Dingtalk) && self.sign_secret.is_some() {
            problems.push((
                "sign_secret".into(),
                "sign_secret belongs to the dingtalk preset".into(),
            ));
        }
        if self.preset != Some(Preset::Discord) && (self.embed || self.username.is_some()) {
            problems.push((
                "embed".into(),
                "embed and username belong to the discord preset".into(),
            ));
        }
        problems
    }

    /// Checks a signal platform's settings, and that no other preset has them.
    fn validate_platform(&self, problems: &mut Vec<(String, String)>) {
        use Preset::{Cornix, ThreeCommasDca as Dca, ThreeCommasSignal as Signal};
        let preset = self.preset;
        let given: [(&str, bool, &[Preset]); 10] = [
            ("token", self.token.is_some(), &[Signal, Dca]),
            ("bot_uuid", self.bot_uuid.is_some(), &[Signal]),
            ("bot_id", self.bot_id.is_some(), &[Dca]),
            ("max_lag", self.max_lag.is_some(), &[Signal]),
            ("delay_seconds", self.delay_seconds.is_some(), &[Dca]),
            ("exchange", self.exchange.is_some(), &[Signal, Cornix]),
            ("pairs", !self.pairs.is_empty(), &[Signal, Dca, Cornix]),
            ("signal_amount", self.signal_amount, &[Signal]),
            (
                "stop_loss_percent",
                self.stop_loss_percent.is_some(),
                &[Cornix],
            ),
            (
                "take_profit_percent",
                self.take_profit_percent.is_some(),
                &[Cornix],
            ),
        ];
        for (field, is_given, owners) in given {
            if is_given && !preset.is_some_and(|p| owners.contains(&p)) {
                let names: Vec<&str> = owners.iter().map(|p| p.as_str()).collect();
                problems.push((
                    field.into(),
                    format!("{field} belongs to the {} preset", names.join(" and ")),
                ));
            }
        }
        let required: &[(&str, bool)] = match preset {
            Some(Signal) => &[
                ("token", self.token.is_some()),
                ("bot_uuid", self.bot_uuid.is_some()),
            ],
            Some(Dca) => &[
                ("token", self.token.is_some()),
                ("bot_id", self.bot_id.is_some()),
            ],
            _ => &[],
        };
        for (field, is_given) in required {
            if !is_given {
                problems.push((
                    (*field).into(),
                    format!(
                        "the {} preset needs the bot's {field}",
                        preset.map_or("", Preset::as_str)
                    ),
                ));
            }
        }
        for (field, value) in [
            ("token", &self.token),
            ("bot_uuid", &self.bot_uuid),
            ("bot_id", &self.bot_id),
            ("exchange", &self.exchange),
        ] {
            if value
                .as_ref()
                .is_some_and(|v| v.is_empty() || v.len() > 256 || v.chars().any(char::is_control))
            {
                problems.push((field.into(), "1 to 256 characters".into()));
            }
        }
        for (field, value) in [
            ("stop_loss_percent", self.stop_loss_percent),
            ("take_profit_percent", self.take_profit_percent),
        ] {
            if value.is_some_and(|v| !(v.is_finite() && v > 0.0 && v < 100.0)) {
                problems.push((field.into(), "more than 0 and less than 100".into()));
            }
        }
        if self.max_lag.is_some_and(|s| !(1..=86_400).contains(&s)) {
            problems.push(("max_lag".into(), "between 1 and 86400 seconds".into()));
        }
        if self.delay_seconds.is_some_and(|s| s > 86_400) {
            problems.push(("delay_seconds".into(), "at most 86400 seconds".into()));
        }
        if preset.is_some_and(|p| p.is_platform() && p != Cornix)
            && self.templates.values().any(Value::is_string)
        {
            problems.push((
                "templates".into(),
                "a 3Commas preset sends JSON: a template is its whole body (an object)".into(),
            ));
        }
    }

    /// Renders the request for one event (`canonical` is the stored event JSON).
    pub fn render(
        &self,
        url: &str,
        event_type: &str,
        canonical: &str,
        now_ms: i64,
    ) -> Result<Rendered, RenderError> {
        if self.is_canonical() {
            return Ok(Rendered {
                body: canonical.as_bytes().to_vec(),
                content_type: "application/json",
                url: None,
            });
        }
        let fail = |message: String| RenderError {
            event_type: event_type.to_owned(),
            message,
        };
        let event: Value = serde_json::from_str(canonical)
            .map_err(|e| fail(format!("the stored event is not JSON: {e}")))?;
        let context = Context::new(&event);
        let lookup = |name: &str| context.get(name);
        let template = self
            .templates
            .get(event_type)
            .or_else(|| self.templates.get("*"));
        let mut rendered = match (self.preset, template) {
            (Some(preset), None) if preset.is_platform() => {
                platform::body(self, preset, event_type, &event, &context, None).map_err(fail)?
            }
            (Some(Preset::Cornix), Some(Value::String(text))) => {
                let message = pyfmt::format(text, &lookup).map_err(|e| fail(e.to_string()))?;
                platform::body(
                    self,
                    Preset::Cornix,
                    event_type,
                    &event,
                    &context,
                    Some(message),
                )
                .map_err(fail)?
            }
            (Some(preset), Some(Value::String(text))) => {
                let message = preset
                    .render_text(self, text, &lookup)
                    .map_err(|e| fail(e.to_string()))?;
                preset.body(self, event_type, &event, &context, message)
            }
            (Some(preset), None) => {
                let message = preset.default_text(self, event_type, &context);
                preset.body(self, event_type, &event, &context, message)
            }
            (_, Some(template)) => self
                .render_body(template, &lookup)
                .map_err(|e| fail(e.to_string()))?,
            (None, None) => Rendered {
                body: match self.envelope {
                    Envelope::Event => canonical.as_bytes().to_vec(),
                    Envelope::Subscription => subscription_body(&event),
                },
                content_type: "application/json",
                url: None,
            },
        };
        if self.preset == Some(Preset::Dingtalk)
            && let Some(secret) = &self.sign_secret
        {
            rendered.url = Some(preset::dingtalk_signed_url(url, secret, now_ms));
        }
        Ok(rendered)
    }

    /// A body from a template of the endpoint's format.
    fn render_body(
        &self,
        template: &Value,
        lookup: &dyn Fn(&str) -> Option<Py>,
    ) -> Result<Rendered, pyfmt::FormatError> {
        let format = if self.preset.is_some() {
            BodyFormat::Json
        } else {
            self.format.unwrap_or_default()
        };
        Ok(match format {
            BodyFormat::Json => {
                let value = render_value(template, lookup, &mut pyfmt::MAX_OUTPUT.clone())?;
                Rendered {
                    body: write_json(&value, self.json_style).into_bytes(),
                    content_type: "application/json",
                    url: None,
                }
            }
            BodyFormat::Form => {
                let value = render_value(template, lookup, &mut pyfmt::MAX_OUTPUT.clone())?;
                let mut body = String::new();
                for (k, v) in value.as_object().into_iter().flatten() {
                    if !body.is_empty() {
                        body.push('&');
                    }
                    let text = match v {
                        Value::String(s) => s.clone(),
                        other => python_str(other),
                    };
                    quote_plus(k, &mut body);
                    body.push('=');
                    quote_plus(&text, &mut body);
                }
                Rendered {
                    body: body.into_bytes(),
                    content_type: "application/x-www-form-urlencoded",
                    url: None,
                }
            }
            BodyFormat::Raw => {
                let text = match template {
                    Value::Object(o) => o.get("data").and_then(Value::as_str).unwrap_or(""),
                    other => other.as_str().unwrap_or(""),
                };
                Rendered {
                    body: pyfmt::format(text, lookup)?.into_bytes(),
                    content_type: "text/plain",
                    url: None,
                }
            }
        })
    }
}

fn collect_strings<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::String(s) => out.push(s),
        Value::Array(items) => items.iter().for_each(|i| collect_strings(i, out)),
        Value::Object(o) => o.values().for_each(|i| collect_strings(i, out)),
        _ => {}
    }
}

/// The most template text an endpoint may hold, over all its event types.
pub const MAX_TEMPLATE_BYTES: usize = 64 * 1024;

/// Checks a template's syntax, and that it fits the rendered size, by rendering it with every
/// field present and empty.
fn check_template(text: &str, budget: &mut usize) -> Result<(), String> {
    let empty = |_: &str| Some(Py::Str(String::new()));
    match pyfmt::format_within(text, &empty, &|t, o| o.push_str(t), budget) {
        Ok(_) | Err(pyfmt::FormatError::Spec { .. } | pyfmt::FormatError::MissingField(_)) => {
            Ok(())
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Renders each string leaf of a template, as Freqtrade's `recursive_format` does; all the
/// leaves share one output budget.
fn render_value(
    template: &Value,
    lookup: &dyn Fn(&str) -> Option<Py>,
    budget: &mut usize,
) -> Result<Value, pyfmt::FormatError> {
    Ok(match template {
        Value::String(s) => Value::String(pyfmt::format_within(
            s,
            lookup,
            &|t, o| o.push_str(t),
            budget,
        )?),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|i| render_value(i, lookup, budget))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, v)| Ok((k.clone(), render_value(v, lookup, budget)?)))
                .collect::<Result<_, _>>()?,
        ),
        other => other.clone(),
    })
}

/// The names a template can use: the event's data fields, and `type`, `event_id`, `source`
/// and `received_at`. Dates (`open_date`, `close_date`, `date`, `*_date`, `timestamp`) are
/// datetimes, so `{close_date:%Y-%m-%d}` works.
pub struct Context<'a> {
    event: &'a Value,
    data: Option<&'a serde_json::Map<String, Value>>,
}

impl<'a> Context<'a> {
    pub fn new(event: &'a Value) -> Self {
        Self {
            event,
            data: event.get("data").and_then(Value::as_object),
        }
    }

    pub fn get(&self, name: &str) -> Option<Py> {
        if let Some(v) = self.data.and_then(|d| d.get(name)) {
            return Some(to_py(name, v));
        }
        let field = match name {
            "type" | "event_type" => "type",
            "event_id" => "id",
            "source" => "source",
            "received_at" => "timestamp",
            _ => return None,
        };
        self.event.get(field).map(|v| to_py(name, v))
    }

    /// A data field as JSON.
    pub fn raw(&self, name: &str) -> Option<&'a Value> {
        self.data.and_then(|d| d.get(name))
    }

    /// The scalar data fields, for a generic message.
    pub fn scalars(&self) -> impl Iterator<Item = (&'a String, &'a Value)> {
        self.data
            .into_iter()
            .flatten()
            .filter(|(_, v)| !v.is_object() && !v.is_array() && !v.is_null())
    }
}

fn is_date_name(name: &str) -> bool {
    name == "date" || name.ends_with("_date") || name == "timestamp" || name == "received_at"
}

fn to_py(name: &str, v: &Value) -> Py {
    match v {
        Value::Null => Py::None,
        Value::Bool(b) => Py::Bool(*b),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Py::Int(i as i128),
            (None, Some(u)) => Py::Int(u as i128),
            _ => Py::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) if is_date_name(name) => match s.parse::<jiff::Timestamp>() {
            Ok(t) => Py::DateTime(t),
            Err(_) => Py::Str(s.clone()),
        },
        Value::String(s) => Py::Str(s.clone()),
        Value::Array(items) => Py::List(items.iter().map(|i| to_py("", i)).collect()),
        Value::Object(o) => Py::Dict(o.iter().map(|(k, v)| (k.clone(), to_py(k, v))).collect()),
    }
}

/// Python's `str()` of a JSON value.
fn python_str(v: &Value) -> String {
    pyfmt::str_of(&to_py("", v))
}

/// Writes JSON compactly or as Python's `json.dumps` does.
pub fn write_json(v: &Value, style: JsonStyle) -> String {
    match style {
        JsonStyle::Compact => v.to_string(),
        JsonStyle::Python => {
            let mut out = String::new();
            python_json(v, &mut out);
            out
        }
    }
}

fn python_json(v: &Value, out: &mut String) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => {
                let _ = write!(out, "{i}");
            }
            (None, Some(u)) => {
                let _ = write!(out, "{u}");
            }
            _ => out.push_str(&pyfmt::float_repr(n.as_f64().unwrap_or(0.0))),
        },
        Value::String(s) => python_json_str(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                python_json(item, out);
            }
            out.push(']');
        }
        Value::Object(o) => {
            out.push('{');
            for (i, (k, item)) in o.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                python_json_str(k, out);
                out.push_str(": ");
                python_json(item, out);
            }
            out.push('}');
        }
    }
}

/// A JSON string with `ensure_ascii`, as Python writes it.
fn python_json_str(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (c as u32) > 0x7e => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Python's `urllib.parse.quote_plus`: letters, digits and `_.-~` are kept, a space is `+`.
pub fn quote_plus(text: &str, out: &mut String) {
    for b in text.bytes() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' | b'-' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            b => {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
}

/// `{id, type, created, data}` of a stored event, `created` in Unix seconds.
fn subscription_body(event: &Value) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct Subscription<'a> {
        id: &'a Value,
        #[serde(rename = "type")]
        event_type: &'a Value,
        created: i64,
        data: &'a Value,
    }
    let created = event
        .get("timestamp")
        .and_then(Value::as_str)
        .and_then(crate::domain::parse_time)
        .map_or(0, |ms| ms.div_euclid(1000));
    serde_json::to_vec(&Subscription {
        id: &event["id"],
        event_type: &event["type"],
        created,
        data: &event["data"],
    })
    .expect("a JSON tree always serializes")
}
#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event() -> String {
        json!({
            "id": "evt_1", "type": "exit_fill", "timestamp": "2024-01-15T14:00:01Z",
            "source": "freqtrade",
            "data": {"pair": "BTC/USDT", "profit_ratio": 0.0287, "close_rate": 43500.0,
                     "trade_id": 42, "enter_tag": null, "close_date": "2024-01-15T14:00:00Z",
                     "note": "é"}
        })
        .to_string()
    }

    fn spec(format: BodyFormat, template: Value) -> RenderSpec {
        RenderSpec {
            format: Some(format),
            templates: [("exit_fill".to_owned(), template)].into(),
            ..RenderSpec::default()
        }
    }

    #[test]
    fn json_form_and_raw_bodies_are_rendered() {
        let s = spec(
            BodyFormat::Json,
            json!({"t": "{pair} {profit_ratio:.2%}", "n": 1, "nested": ["{trade_id}"]}),
        );
        let r = s.render("http://x/", "exit_fill", &event(), 0).unwrap();
        assert_eq!(
            String::from_utf8(r.body).unwrap(),
            r#"{"t":"BTC/USDT 2.87%","n":1,"nested":["42"]}"#
        );
        let s = spec(
            BodyFormat::Form,
            json!({"value1": "Sold {pair}", "value2": "{close_date:%H:%M} {note}"}),
        );
        let r = s.render("http://x/", "exit_fill", &event(), 0).unwrap();
        assert_eq!(
            String::from_utf8(r.body).unwrap(),
            "value1=Sold+BTC%2FUSDT&value2=14%3A00+%C3%A9"
        );
        assert_eq!(r.content_type, "application/x-www-form-urlencoded");
        let s = spec(BodyFormat::Raw, json!({"data": "{pair}\n{close_rate}"}));
        let r = s.render("http://x/", "exit_fill", &event(), 0).unwrap();
        assert_eq!(r.body, b"BTC/USDT\n43500.0");
        assert_eq!(r.content_type, "text/plain");
    }

    #[test]
    fn missing_fields_and_null_numbers_are_render_errors() {
        let s = spec(BodyFormat::Raw, json!("{exit_reason}"));
        let e = s.render("http://x/", "exit_fill", &event(), 0).unwrap_err();
        assert_eq!(
            e.to_string(),
            "template for exit_fill: no field named 'exit_reason'"
        );
        let s = spec(BodyFormat::Raw, json!("{enter_tag:.2f}"));
        assert!(s.render("http://x/", "exit_fill", &event(), 0).is_err());
    }

    #[test]
    fn python_json_style_matches_json_dumps() {
        let v = json!({"a": 1e-05, "b": "é\n", "c": [1, 2.0]});
        assert_eq!(
            write_json(&v, JsonStyle::Python),
            r#"{"a": 1e-05, "b": "\u00e9\n", "c": [1, 2.0]}"#
        );
    }
}
