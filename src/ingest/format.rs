//! Payload formats: how a body becomes an event type and its data.
//!
//! - `json`: any JSON body, its type from a `type` field (`webhook` when there is none); with a
//!   [`Mapping`], fields are picked by JSON pointer and normalized like the trading formats.
//! - `freqtrade`: what Freqtrade's webhook module sends as `json`, `form` or `raw`; every value
//!   arrives as Python text and is typed.
//! - `tradingview`: an alert's JSON, or a short text command such as `buy BTCUSDT 0.01`.
//! - `copytrade`: the copy-trading signal JSON (`action`, `direction`, string numbers).
//! - `envelope`: a provider envelope `{id, type, created, data}`.
//!
//! The trading formats yield the canonical event of [`crate::trading`].

pub use crate::model::source::{Format, Mapping};

use http::HeaderMap;
use serde_json::{Map, Value};

use super::Rejection;
use crate::domain::EventType;
use crate::trading::{self, Problem};

/// The event type given to a generic JSON payload that names none.
pub const DEFAULT_EVENT_TYPE: &str = "webhook";

impl Mapping {
    /// Checks the pointers and type names; the error names the offending key.
    pub fn validate(&self) -> Result<(), (String, String)> {
        for (field, pointer) in &self.fields {
            if !pointer.starts_with('/') {
                return Err((
                    format!("mapping.fields.{field}"),
                    "must be a JSON pointer such as /data/pair".into(),
                ));
            }
        }
        for (from, to) in &self.types {
            if let Err(e) = EventType::parse(to) {
                return Err((format!("mapping.types.{from}"), e.to_string()));
            }
        }
        Ok(())
    }
}

/// A decoded body.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    Json(Value),
    Text(String),
}

impl Payload {
    pub fn as_object_mut(&mut self) -> Option<&mut Map<String, Value>> {
        match self {
            Payload::Json(v) => v.as_object_mut(),
            Payload::Text(_) => None,
        }
    }
}

/// What a payload says: its type, canonical data and the sender's own id, if any.
#[derive(Debug, Clone, PartialEq)]
pub struct Interpreted {
    pub event_type: EventType,
    pub data: Value,
    pub id: Option<String>,
}

fn malformed(message: impl Into<String>) -> Rejection {
    Rejection::MalformedBody(message.into())
}

fn invalid(field: &str, message: impl Into<String>) -> Rejection {
    Rejection::Invalid(vec![Problem::new(field, message)])
}

fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

fn utf8(body: &[u8]) -> Result<&str, Rejection> {
    std::str::from_utf8(body).map_err(|_| malformed("the body is not UTF-8 text"))
}

fn parse_json(body: &[u8]) -> Result<Value, Rejection> {
    let value = serde_json::from_slice(body)
        .map_err(|e| malformed(format!("the body is not valid JSON: {e}")))?;
    exact_numbers(body)?;
    Ok(value)
}

/// Refuses a body holding an integer JSON cannot keep exactly, rather than store another number.
fn exact_numbers(body: &[u8]) -> Result<(), Rejection> {
    crate::domain::exact_integers(body).map_err(malformed)
}

impl Format {
    /// Decodes a request body as this format's senders write it.
    pub fn decode(self, body: &[u8], headers: &HeaderMap) -> Result<Payload, Rejection> {
        match self {
            Format::Json | Format::Copytrade | Format::Envelope | Format::Command => {
                parse_json(body).map(Payload::Json)
            }
            Format::Freqtrade => match content_type(headers).as_str() {
                "application/x-www-form-urlencoded" => {
                    let mut map = Map::new();
                    for (k, v) in form_urlencoded::parse(body) {
                        map.insert(k.into_owned(), Value::String(v.into_owned()));
                    }
                    Ok(Payload::Json(Value::Object(map)))
                }
                "application/json" => parse_json(body).map(Payload::Json),
                // `raw`: the rendered `data` template, JSON or not.
                _ => {
                    let text = utf8(body)?;
                    Ok(match serde_json::from_str::<Value>(text) {
                        Ok(v @ Value::Object(_)) => {
                            exact_numbers(body)?;
                            Payload::Json(v)
                        }
                        _ => Payload::Text(text.to_owned()),
                    })
                }
            },
            Format::Tradingview => {
                let text = utf8(body)?;
                Ok(match serde_json::from_str::<Value>(text) {
                    Ok(v @ Value::Object(_)) => {
                        exact_numbers(body)?;
                        Payload::Json(v)
                    }
                    // An alert that means to be JSON gets the JSON error, not the text
                    // commands' one.
                    Err(e) if text.trim_start().starts_with('{') => {
                        return Err(malformed(format!("the body is not valid JSON: {e}")));
                    }
                    _ => Payload::Text(text.trim().to_owned()),
                })
            }
        }
    }

    /// Reads the type, canonical data and sender id out of a decoded payload.
    pub fn interpret(
        self,
        payload: Payload,
        mapping: Option<&Mapping>,
    ) -> Result<Interpreted, Rejection> {
        match (self, payload) {
            (Format::Json, Payload::Json(v)) => match mapping {
                Some(m) => mapped(v, m),
                None => Ok(Interpreted {
                    event_type: generic_type(&v)?,
                    data: v,
                    id: None,
                }),
            },
            (Format::Freqtrade, Payload::Json(Value::Object(map))) => freqtrade(map),
            (Format::Freqtrade, Payload::Text(text)) => {
                let mut data = Map::new();
                data.insert("status".into(), Value::String(text));
                finish("status", data, false, None)
            }
            (Format::Tradingview, Payload::Json(Value::Object(map))) => tradingview(map),
            (Format::Tradingview, Payload::Text(text)) => tradingview_text(&text),
            (Format::Copytrade, Payload::Json(Value::Object(map))) => copytrade(map),
            (Format::Envelope, Payload::Json(Value::Object(map))) => envelope(map),
            (Format::Command, Payload::Json(Value::Object(map))) => command(map),
            (_, _) => Err(malformed("the body must be a JSON object")),
        }
    }
}

/// A command to the hub: `{"command": "halt" | "resume", "account": NAME, "reason": …,
/// "exits_allowed": …, "id": …}` becomes the event `command.halt` or `command.resume`.
fn command(mut map: Map<String, Value>) -> Result<Interpreted, Rejection> {
    let mut problems = Vec::new();
    let command = match map.shift_remove("command") {
        Some(Value::String(c)) if c == "halt" || c == "resume" => c,
        _ => {
            problems.push(Problem::new("command", "halt or resume"));
            String::new()
        }
    };
    match map.get("account") {
        Some(Value::String(a)) if !a.trim().is_empty() && a.len() <= 64 => {}
        _ => problems.push(Problem::new(
            "account",
            "the account's name or id, or \"*\" for every account",
        )),
    }
    match map.get("reason") {
        None | Some(Value::Null) => {}
        Some(Value::String(r)) if r.chars().count() <= 500 => {}
        _ => problems.push(Problem::new("reason", "text of at most 500 characters")),
    }
    match map.get("exits_allowed") {
        None | Some(Value::Null | Value::Bool(_)) => {}
        _ => problems.push(Problem::new("exits_allowed", "true or false")),
    }
    let id = map.shift_remove("id").as_ref().and_then(text_of);
    if let Some(unknown) = map
        .keys()
        .find(|k| !matches!(k.as_str(), "account" | "reason" | "exits_allowed"))
    {
        problems.push(Problem::new(
            unknown.clone(),
            "not a field of a command (command, account, reason, exits_allowed, id)",
        ));
    }
    if !problems.is_empty() {
        return Err(Rejection::Invalid(problems));
    }
    Ok(Interpreted {
        event_type: EventType::parse(&format!("command.{command}")).expect("a valid type"),
        data: Value::Object(map),
        id,
    })
}

fn generic_type(v: &Value) -> Result<EventType, Rejection> {
    match v.get("type") {
        None | Some(Value::Null) => {
            Ok(EventType::parse(DEFAULT_EVENT_TYPE).expect("the default event type is valid"))
        }
        Some(Value::String(s)) => EventType::parse(s).map_err(|e| invalid("type", e.to_string())),
        Some(_) => Err(invalid("type", "must be a string")),
    }
}

/// Normalizes `data` for `event_type` and builds the result.
fn finish(
    event_type: &str,
    mut data: Map<String, Value>,
    python: bool,
    id: Option<String>,
) -> Result<Interpreted, Rejection> {
    let event_type = EventType::parse(event_type).map_err(|e| invalid("type", e.to_string()))?;
    data.shift_remove("type");
    trading::normalize(event_type.as_str(), &mut data, python).map_err(Rejection::Invalid)?;
    Ok(Interpreted {
        event_type,
        data: Value::Object(data),
        id,
    })
}

fn text_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_owned()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Moves the first present field of `from` to `to`, unless `to` is already set.
fn rename(data: &mut Map<String, Value>, from: &[&str], to: &str) {
    if data.get(to).is_some_and(|v| !v.is_null()) {
        return;
    }
    for name in from {
        if let Some(v) = data.shift_remove(*name) {
            data.insert(to.into(), v);
            return;
        }
    }
}

fn unknown_type(given: &str, known: &[&str]) -> Rejection {
    invalid(
        "type",
        format!(
            "unknown type {given:?}; expected one of {}",
            known.join(", ")
        ),
    )
}

/// Freqtrade's message types, with the names of releases before 2022.
fn freqtrade_type(t: &str) -> Option<&'static str> {
    Some(match t {
        "buy" => "entry",
        "buy_fill" => "entry_fill",
        "buy_cancel" => "entry_cancel",
        "sell" => "exit",
        "sell_fill" => "exit_fill",
        "sell_cancel" => "exit_cancel",
        other => return trading::TYPES.iter().find(|k| **k == other).copied(),
    })
}

fn freqtrade(mut data: Map<String, Value>) -> Result<Interpreted, Rejection> {
    let given = data.get("type").and_then(text_of);
    let event_type = match given.as_deref() {
        Some(t) => freqtrade_type(t).ok_or_else(|| unknown_type(t, trading::TYPES))?,
        // A status template often sends only {"status": "…"}.
        None if data.contains_key("status") => "status",
        None if data.contains_key("msg") => "strategy_msg",
        None => {
            return Err(invalid(
                "type",
                "missing: add \"type\": \"{type}\" to each of the Freqtrade webhook templates",
            ));
        }
    };
    rename(&mut data, &["buy_tag"], "enter_tag");
    rename(&mut data, &["sell_reason"], "exit_reason");
    finish(event_type, data, true, None)
}

const COPYTRADE_TYPES: &[&str] = &[
    "entry",
    "entry_fill",
    "entry_cancel",
    "exit",
    "exit_fill",
    "exit_cancel",
    "status",
];

fn copytrade(mut data: Map<String, Value>) -> Result<Interpreted, Rejection> {
    let action = data
        .shift_remove("action")
        .and_then(|v| text_of(&v))
        .ok_or_else(|| {
            invalid(
                "action",
                "missing: say entry, exit, entry_fill, … or status",
            )
        })?;
    let action = action.to_ascii_lowercase();
    let event_type = COPYTRADE_TYPES
        .iter()
        .find(|t| **t == action)
        .ok_or_else(|| {
            Rejection::Invalid(vec![Problem::new(
                "action",
                format!(
                    "unknown action {action:?}; expected one of {}",
                    COPYTRADE_TYPES.join(", ")
                ),
            )])
        })?;
    rename(&mut data, &["direction"], "side");
    rename(&mut data, &["timestamp"], "date");
    let id = data.get("id").and_then(text_of);
    finish(event_type, data, true, id)
}

fn envelope(mut outer: Map<String, Value>) -> Result<Interpreted, Rejection> {
    let id = outer.get("id").and_then(text_of);
    let given = outer
        .get("type")
        .and_then(text_of)
        .ok_or_else(|| invalid("type", "missing"))?;
    let event_type = match given.as_str() {
        "trade.new" | "trade.open" => "entry",
        "trade.close" => "exit",
        "trade.liquidation" => "liquidation",
        other => match trading::TYPES.iter().find(|t| **t == other) {
            Some(t) => t,
            None => {
                return Err(unknown_type(
                    other,
                    &["trade.new", "trade.close", "trade.liquidation"],
                ));
            }
        },
    };
    let mut data = match outer.shift_remove("data") {
        Some(Value::Object(d)) => d,
        Some(_) => return Err(invalid("data", "must be an object")),
        None => Map::new(),
    };
    rename(
        &mut data,
        &["marketSymbol", "symbol", "market", "ticker"],
        "pair",
    );
    rename(&mut data, &["entryPrice"], "open_rate");
    rename(
        &mut data,
        &["exitPrice", "closePrice", "markPrice"],
        "close_rate",
    );
    rename(&mut data, &["size", "quantity", "qty"], "amount");
    rename(&mut data, &["pnl", "realizedPnl"], "profit_abs");
    rename(&mut data, &["timestamp", "time"], "date");
    if data.get("stake_amount").is_none()
        && let Some(usd) = data.shift_remove("sizeUsd")
    {
        data.insert("stake_amount".into(), usd);
        data.entry("stake_currency").or_insert("USD".into());
    }
    if event_type == "liquidation" {
        data.entry("exit_reason").or_insert("liquidation".into());
    }
    if data.get("date").is_none()
        && let Some(created) = outer.shift_remove("created")
    {
        data.insert("date".into(), created);
    }
    data.insert("provider_type".into(), Value::String(given));
    finish(event_type, data, false, id)
}

/// A TradingView action: the event type and, when it says so, the side.
fn tradingview_action(action: &str, flat: bool) -> Option<(&'static str, Option<&'static str>)> {
    let a = action.trim().to_ascii_lowercase().replace([' ', '-'], "_");
    Some(match a.as_str() {
        // With strategy.market_position "flat", an order closes the opposite position.
        "buy" if flat => ("exit", Some("short")),
        "sell" if flat => ("exit", Some("long")),
        "buy" | "long" | "enter_long" | "open_long" | "entry_long" => ("entry", Some("long")),
        "sell" | "short" | "enter_short" | "open_short" | "entry_short" => ("entry", Some("short")),
        "close" | "exit" | "flat" | "close_all" | "exit_all" => ("exit", None),
        "close_long" | "exit_long" => ("exit", Some("long")),
        "close_short" | "exit_short" => ("exit", Some("short")),
        "entry" | "entry_fill" | "entry_cancel" | "exit_fill" | "exit_cancel" | "status" => {
            (trading::TYPES.iter().find(|t| **t == a)?, None)
        }
        _ => return None,
    })
}

fn tradingview(mut data: Map<String, Value>) -> Result<Interpreted, Rejection> {
    // The sender's secret never reaches the store, however it was checked.
    super::remove_secrets(&mut data);
    let unfilled: Vec<Problem> = data
        .iter()
        .filter_map(|(k, v)| {
            let s = v.as_str()?;
            let start = s.find("{{")?;
            let end = s[start..].find("}}").map(|e| start + e + 2)?;
            Some(Problem::new(
                k.clone(),
                format!(
                    "the placeholder {} was not filled in by TradingView (is the alert on a strategy?)",
                    &s[start..end]
                ),
            ))
        })
        .collect();
    if !unfilled.is_empty() {
        return Err(Rejection::Invalid(unfilled));
    }
    let id = ["client_ref", "id", "order_id"]
        .iter()
        .find_map(|k| data.get(*k).and_then(text_of));
    rename(&mut data, &["ticker", "symbol"], "pair");
    let flat = ["market_position", "position"]
        .iter()
        .any(|k| data.get(*k).and_then(Value::as_str) == Some("flat"));
    let action_field = ["action", "signal", "order_action"]
        .into_iter()
        .find(|k| data.get(*k).and_then(text_of).is_some());
    let (event_type, side) = match action_field {
        Some(field) => {
            let action = data.get(field).and_then(text_of).expect("found above");
            tradingview_action(&action, flat).ok_or_else(|| {
                invalid(
                    field,
                    format!(
                        "{action:?} is not an action: use buy, sell, long, short, close, \
                         close_long or close_short"
                    ),
                )
            })?
        }
        None => match data
            .get("side")
            .and_then(Value::as_str)
            .and_then(trading::parse_side)
        {
            Some(side) => ("entry", Some(side)),
            None => {
                return Err(invalid(
                    "action",
                    "missing: say what to do with \"action\": \"{{strategy.order.action}}\" \
                     (buy, sell, close …)",
                ));
            }
        },
    };
    if let Some(action_field) = action_field
        && action_field != "action"
    {
        let v = data.shift_remove(action_field).expect("found above");
        data.insert("action".into(), v);
    }
    // A venue's own side words (BACK/LAY) are kept, not read as long/short.
    if let Some(s) = data.get("side").and_then(Value::as_str)
        && trading::parse_side(s).is_none()
    {
        let v = data.shift_remove("side").expect("present");
        data.insert("venue_side".into(), v);
    }
    if let Some(side) = side {
        data.insert("side".into(), side.into());
    }
    rename(&mut data, &["close"], "price");
    rename(
        &mut data,
        &["contracts", "qty", "quantity", "size", "order_contracts"],
        "amount",
    );
    rename(&mut data, &["stake"], "stake_amount");
    rename(&mut data, &["time", "timenow", "timestamp"], "date");
    finish(event_type, data, false, id)
}

/// `buy BTCUSDT 0.01`, `sell BINANCE:ETHUSDT.P 1.5 @ 3000`, `close ETH/USDT`.
fn tradingview_text(text: &str) -> Result<Interpreted, Rejection> {
    let usage = "a text alert reads ACTION SYMBOL [AMOUNT] [@ PRICE], e.g. \"buy BTCUSDT 0.01\"";
    let words: Vec<&str> = text.split_whitespace().filter(|w| *w != "@").collect();
    let [action, symbol, rest @ ..] = words.as_slice() else {
        return Err(invalid("body", usage));
    };
    if rest.len() > 2 {
        return Err(invalid("body", usage));
    }
    let (event_type, side) = tradingview_action(action, false)
        .ok_or_else(|| invalid("action", format!("{action:?}: {usage}")))?;
    let mut data = Map::new();
    data.insert("action".into(), Value::String(action.to_ascii_lowercase()));
    data.insert("pair".into(), Value::String((*symbol).to_owned()));
    if let Some(side) = side {
        data.insert("side".into(), side.into());
    }
    let numbers = ["amount", "price"];
    for (field, word) in numbers.iter().zip(rest) {
        data.insert(
            (*field).into(),
            Value::String(word.trim_start_matches('@').to_owned()),
        );
    }
    finish(event_type, data, false, None)
}

fn mapped(payload: Value, mapping: &Mapping) -> Result<Interpreted, Rejection> {
    let Value::Object(mut data) = payload.clone() else {
        return Err(malformed("the body must be a JSON object"));
    };
    let mut id = None;
    let mut given_type = None;
    for (field, pointer) in &mapping.fields {
        let Some(v) = payload.pointer(pointer) else {
            continue;
        };
        match field.as_str() {
            "id" => id = text_of(v),
            "type" => given_type = text_of(v),
            _ => {
                data.insert(field.clone(), v.clone());
            }
        }
    }
    let given_type = given_type.or_else(|| data.get("type").and_then(text_of));
    let event_type = match given_type {
        Some(t) => match mapping.types.get(&t) {
            Some(canonical) => canonical.clone(),
            None if mapping.types.is_empty() || trading::TYPES.contains(&t.as_str()) => t,
            None => {
                let known: Vec<&str> = mapping.types.keys().map(String::as_str).collect();
                return Err(unknown_type(&t, &known));
            }
        },
        None => DEFAULT_EVENT_TYPE.to_owned(),
    };
    finish(&event_type, data, false, id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn read(format: Format, body: &str, content_type: &str) -> Result<Interpreted, Rejection> {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", content_type.parse().unwrap());
        format.interpret(format.decode(body.as_bytes(), &headers)?, None)
    }

    #[test]
    fn generic_json_takes_its_type_from_the_type_field() {
        let ok = read(
            Format::Json,
            r#"{"type":"exit_fill","pair":"BTC/USDT"}"#,
            "application/json",
        )
        .unwrap();
        assert_eq!(ok.event_type.as_str(), "exit_fill");
        let ok = read(Format::Json, r#"{"pair":"BTC/USDT"}"#, "application/json").unwrap();
        assert_eq!(ok.event_type.as_str(), "webhook");
        assert_eq!(
            read(Format::Json, r#"{"type":7}"#, "application/json")
                .unwrap_err()
                .code(),
            "invalid_payload"
        );
        assert_eq!(
            read(Format::Json, "{\"type\":", "application/json")
                .unwrap_err()
                .code(),
            "malformed_body"
        );
    }

    #[test]
    fn freqtrade_form_and_raw_bodies_are_read() {
        let form = "type=exit_fill&pair=BTC%2FUSDT&trade_id=42&close_rate=43500.0&profit_ratio=0.0287\
                    &exit_reason=roi&close_date=2024-01-15+14%3A00%3A00%2B00%3A00&enter_tag=None";
        let ok = read(Format::Freqtrade, form, "application/x-www-form-urlencoded").unwrap();
        assert_eq!(ok.event_type.as_str(), "exit_fill");
        assert_eq!(ok.data["trade_id"], json!(42));
        assert_eq!(ok.data["close_rate"], json!(43500.0));
        assert_eq!(ok.data["price"], json!(43500.0));
        assert_eq!(ok.data["close_date"], json!("2024-01-15T14:00:00Z"));
        assert_eq!(ok.data["enter_tag"], Value::Null);

        let raw = read(
            Format::Freqtrade,
            "Status: running\nTrades: 3",
            "text/plain",
        )
        .unwrap();
        assert_eq!(raw.event_type.as_str(), "status");
        assert_eq!(raw.data["status"], json!("Status: running\nTrades: 3"));
    }

    #[test]
    fn tradingview_alerts_and_text_commands_are_read() {
        let ok = read(
            Format::Tradingview,
            r#"{"ticker":"BINANCE:BTCUSDT.P","action":"sell","market_position":"flat","price":"64000.5","contracts":"0.01","client_ref":"a-1"}"#,
            "application/json",
        )
        .unwrap();
        assert_eq!(ok.event_type.as_str(), "exit");
        assert_eq!(ok.data["side"], json!("long"));
        assert_eq!(ok.data["pair"], json!("BTC/USDT"));
        assert_eq!(ok.data["perpetual"], json!(true));
        assert_eq!(ok.data["close_rate"], json!(64000.5));
        assert_eq!(ok.id.as_deref(), Some("a-1"));

        let text = read(
            Format::Tradingview,
            "buy BTCUSDT 0.01 @ 64000",
            "text/plain",
        )
        .unwrap();
        assert_eq!(text.event_type.as_str(), "entry");
        assert_eq!(text.data["amount"], json!(0.01));
        assert_eq!(text.data["open_rate"], json!(64000));
        let close = read(Format::Tradingview, "close ETH/USDT", "text/plain").unwrap();
        assert_eq!(close.event_type.as_str(), "exit");

        let unfilled = read(
            Format::Tradingview,
            r#"{"ticker":"BTCUSDT","action":"{{strategy.order.action}}"}"#,
            "application/json",
        )
        .unwrap_err();
        assert_eq!(unfilled.code(), "invalid_payload");
    }
}
