//! The canonical trade event: its types, its well-known fields, and how loosely typed input
//! (Freqtrade's strings, TradingView's symbols) becomes it.
//!
//! Every inbound format maps its sender's names onto the canonical field names (which are
//! Freqtrade's, so Freqtrade templates work on any event) and then calls [`normalize`], which
//! types the values, derives `pair`/`base`/`quote`, `side` and `price`, and validates.
//!
//! ```
//! use tradehook::trading::parse_pair;
//! let p = parse_pair("BINANCE:BTCUSDT.P").unwrap();
//! assert_eq!((p.pair.as_str(), p.exchange.as_deref(), p.perpetual), ("BTC/USDT", Some("binance"), true));
//! assert_eq!(parse_pair("eth_usdc").unwrap().pair, "ETH/USDC");
//! ```

use serde_json::{Map, Value};

/// The event types a trading format may produce.
pub const TYPES: &[&str] = &[
    "entry",
    "entry_fill",
    "entry_cancel",
    "exit",
    "exit_fill",
    "exit_cancel",
    "status",
    "warning",
    "startup",
    "exception",
    "protection_trigger",
    "protection_trigger_global",
    "liquidation_warning",
    "liquidation",
    "strategy_msg",
];

/// Freqtrade's "every pair" and "both sides", as its protection locks say them.
pub const ALL: &str = "*";

/// Types that are about one position and must name its pair.
pub fn is_trade_type(t: &str) -> bool {
    matches!(
        t,
        "entry"
            | "entry_fill"
            | "entry_cancel"
            | "exit"
            | "exit_fill"
            | "exit_cancel"
            | "liquidation"
            | "liquidation_warning"
    )
}

/// Numbers that must be finite and greater than zero.
const POSITIVE: &[&str] = &[
    "price",
    "open_rate",
    "close_rate",
    "order_rate",
    "limit",
    "current_rate",
    "amount",
    "stake_amount",
    "leverage",
    "liquidation_price",
];
/// Numbers of any sign (profits, ratios).
const SIGNED: &[&str] = &[
    "profit_ratio",
    "profit_abs",
    "profit_amount",
    "cumulative_profit",
    "final_profit_ratio",
    "realized_profit",
    "remaining_ratio",
    "warn_ratio",
    "stop_loss",
    "take_profit",
];
const INTEGERS: &[&str] = &["trade_id", "positions_at_risk", "open_positions"];
const BOOLEANS: &[&str] = &[
    "sub_trade",
    "is_final_exit",
    "active",
    "is_short",
    "perpetual",
];
/// Text fields: never read as numbers, even when they look like one.
const TEXT: &[&str] = &[
    "pair",
    "symbol",
    "exchange",
    "enter_tag",
    "buy_tag",
    "exit_reason",
    "exit_tag",
    "sell_reason",
    "reason",
    "strategy",
    "stake_currency",
    "base_currency",
    "quote_currency",
    "fiat_currency",
    "status",
    "msg",
    "order_type",
    "direction",
    "gain",
    "margin_mode",
    "lock_time",
    "lock_end_time",
    "duration",
];

/// One problem with an inbound payload, by field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub field: String,
    pub message: String,
}

impl Problem {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// A pair read from a symbol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pair {
    /// `BASE/QUOTE`, upper case.
    pub pair: String,
    pub base: String,
    pub quote: String,
    /// From an `EXCHANGE:` prefix, lower case.
    pub exchange: Option<String>,
    /// Said by a `.P`, `-PERP` or `:SETTLE` suffix.
    pub perpetual: bool,
}

/// Quote currencies recognised at the end of a symbol without a separator, longest first.
const QUOTES: &[&str] = &[
    "FDUSD", "USDT", "USDC", "BUSD", "TUSD", "USDP", "USDE", "USD", "DAI", "EUR", "GBP", "JPY",
    "TRY", "BRL", "AUD", "BTC", "ETH", "BNB",
];

/// Reads `BTCUSDT`, `BTC-USDT`, `btc_usdt`, `BTC/USDT:USDT`, `BINANCE:BTCUSDT.P` or `SOL-PERP`.
pub fn parse_pair(text: &str) -> Result<Pair, String> {
    let mut s = text.trim().to_ascii_uppercase();
    let mut exchange = None;
    let mut perpetual = false;
    // "BINANCE:BTCUSDT": an exchange prefix (a settle suffix "BTC/USDT:USDT" comes after a '/').
    if let Some((prefix, rest)) = s.split_once(':')
        && !prefix.contains(['/', '-', '_'])
        && !rest.is_empty()
        && !prefix.is_empty()
    {
        exchange = Some(prefix.to_ascii_lowercase());
        s = rest.to_owned();
    }
    if let Some(rest) = s.strip_suffix(".P") {
        perpetual = true;
        s = rest.to_owned();
    }
    if let Some((pair, settle)) = s.split_once(':') {
        if settle.is_empty() || !settle.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(format!("{text:?} is not a pair such as BTC/USDT"));
        }
        perpetual = true;
        s = pair.to_owned();
    }
    for suffix in ["-PERP", "_PERP", "PERP"] {
        if let Some(base) = s.strip_suffix(suffix)
            && !base.is_empty()
            && !base.contains(['/', '-', '_'])
        {
            // Perpetuals named by the base alone (SOL-PERP) are quoted in USD.
            return finish(text, base, "USD", exchange, true);
        }
    }
    let parts: Vec<&str> = s.split(['/', '-', '_']).collect();
    match parts.as_slice() {
        [base, quote] => finish(text, base, quote, exchange, perpetual),
        [one] => QUOTES
            .iter()
            .find(|q| one.len() > q.len() && one.ends_with(*q))
            .map(|q| {
                finish(
                    text,
                    &one[..one.len() - q.len()],
                    q,
                    exchange.clone(),
                    perpetual,
                )
            })
            .unwrap_or_else(|| {
                Err(format!(
                    "cannot tell the base from the quote in {text:?}; write it as BASE/QUOTE"
                ))
            }),
        _ => Err(format!("{text:?} is not a pair such as BTC/USDT")),
    }
}

fn finish(
    text: &str,
    base: &str,
    quote: &str,
    exchange: Option<String>,
    perpetual: bool,
) -> Result<Pair, String> {
    let ok =
        |s: &str| !s.is_empty() && s.len() <= 20 && s.chars().all(|c| c.is_ascii_alphanumeric());
    if !ok(base) || !ok(quote) {
        return Err(format!("{text:?} is not a pair such as BTC/USDT"));
    }
    Ok(Pair {
        pair: format!("{base}/{quote}"),
        base: base.to_owned(),
        quote: quote.to_owned(),
        exchange,
        perpetual,
    })
}

/// Reads a side: `long`/`short`, or `buy`/`sell` for the side of an opening order.
pub fn parse_side(text: &str) -> Option<&'static str> {
    match text.trim().to_ascii_lowercase().as_str() {
        "long" | "buy" => Some("long"),
        "short" | "sell" => Some("short"),
        _ => None,
    }
}

/// A Python value as Freqtrade renders it into text: `"42"`, `"0.0287"`, `"None"`, `"True"`,
/// `"2024-05-01 12:00:00.123456+00:00"`. Anything else stays text.
pub fn python_literal(text: &str) -> Value {
    match text {
        "None" | "null" => return Value::Null,
        "True" | "true" => return Value::Bool(true),
        "False" | "false" => return Value::Bool(false),
        _ => {}
    }
    if let Some(n) = number_text(text) {
        return n;
    }
    if let Some(t) = datetime_text(text) {
        return Value::String(t);
    }
    Value::String(text.to_owned())
}

/// An integer or float literal (finite or not: the caller validates).
fn number_text(text: &str) -> Option<Value> {
    let t = text.trim();
    if t.is_empty() || t.len() > 64 {
        return None;
    }
    let digits = t.strip_prefix(['-', '+']).unwrap_or(t);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        return t.parse::<i64>().ok().map(Value::from);
    }
    let looks_numeric = digits
        .bytes()
        .all(|b| b.is_ascii_digit() || b"eE.+-".contains(&b))
        && digits.bytes().any(|b| b.is_ascii_digit());
    if looks_numeric && let Ok(f) = t.parse::<f64>() {
        return Some(float_value(f));
    }
    let lower = digits.to_ascii_lowercase();
    if matches!(lower.as_str(), "nan" | "inf" | "infinity") {
        // Not representable in JSON: kept as a marker the validation reports.
        return Some(Value::String(t.to_owned()));
    }
    None
}

/// A float as JSON; non-finite floats become the text the validation rejects.
fn float_value(f: f64) -> Value {
    serde_json::Number::from_f64(f)
        .map(Value::Number)
        .unwrap_or_else(|| Value::String(f.to_string()))
}

/// Reads a time as Python, ISO 8601 or a Unix timestamp writes it, and returns RFC 3339 UTC.
/// A time without an offset is taken as UTC (Freqtrade's dates are UTC).
pub fn datetime_text(text: &str) -> Option<String> {
    let t = text.trim();
    if t.len() < 10 || t.len() > 40 || !t.as_bytes()[0].is_ascii_digit() {
        return None;
    }
    if let Ok(ts) = t.parse::<jiff::Timestamp>() {
        return Some(ts.to_string());
    }
    let normalized = t.replacen(' ', "T", 1);
    if let Ok(ts) = normalized.parse::<jiff::Timestamp>() {
        return Some(ts.to_string());
    }
    if let Ok(dt) = normalized.parse::<jiff::civil::DateTime>() {
        let ts = dt.to_zoned(jiff::tz::TimeZone::UTC).ok()?.timestamp();
        return Some(ts.to_string());
    }
    None
}

fn unix_time(v: &Value) -> Option<String> {
    let secs = v.as_f64()?;
    // Milliseconds when it is too large to be seconds.
    let ms = if secs > 1e11 { secs } else { secs * 1000.0 };
    let ts = jiff::Timestamp::from_millisecond(ms.round() as i64).ok()?;
    Some(ts.to_string())
}

/// Types the values of a canonical payload, derives the pair and price fields, and checks it.
///
/// `strings_are_python`: every value arrived as text (Freqtrade, copy-trading JSON), so
/// unknown fields are read as Python literals too.
pub fn normalize(
    event_type: &str,
    data: &mut Map<String, Value>,
    strings_are_python: bool,
) -> Result<(), Vec<Problem>> {
    let mut problems = Vec::new();
    let keys: Vec<String> = data.keys().cloned().collect();
    for key in keys {
        let value = data.get_mut(&key).expect("key listed above");
        normalize_field(&key, value, strings_are_python, &mut problems);
    }
    let trade = is_trade_type(event_type);
    if let Some(Value::String(symbol)) = data.get("pair").cloned() {
        match parse_pair(&symbol) {
            // Freqtrade's global protection locks every pair: "*", kept as it came.
            _ if symbol.trim() == ALL && !trade => {
                data.insert("pair".into(), Value::String(ALL.into()));
            }
            _ if symbol.trim() == ALL => problems.push(Problem::new(
                "pair",
                format!("\"*\" (every pair) names no position; {event_type} events name one pair"),
            )),
            Ok(p) => {
                if p.pair != symbol {
                    data.insert("symbol".into(), Value::String(symbol));
                }
                data.insert("pair".into(), Value::String(p.pair));
                data.entry("base_currency").or_insert(Value::String(p.base));
                data.entry("quote_currency")
                    .or_insert(Value::String(p.quote));
                if let Some(exchange) = p.exchange {
                    data.entry("exchange").or_insert(Value::String(exchange));
                }
                if p.perpetual {
                    data.insert("perpetual".into(), Value::Bool(true));
                }
            }
            Err(message) => problems.push(Problem::new("pair", message)),
        }
    } else if data.get("pair").is_some_and(|v| !v.is_null()) {
        problems.push(Problem::new("pair", "must be text such as BTC/USDT"));
    }
    if trade && data.get("pair").is_none_or(Value::is_null) {
        problems.push(Problem::new(
            "pair",
            format!("required: {event_type} events name their pair"),
        ));
    }
    // side: long/short, from `side`, Freqtrade's `direction` ("Long") or `is_short`.
    let side = match data.get("side") {
        // A protection lock on both sides (Freqtrade's "*").
        Some(Value::String(s)) if s.trim() == ALL && !trade => Some(ALL),
        Some(Value::String(s)) => match parse_side(s) {
            Some(side) => Some(side),
            None if s.trim() == ALL => {
                problems.push(Problem::new(
                    "side",
                    format!("\"*\" (both sides) names no position; {event_type} events are long or short"),
                ));
                None
            }
            None => {
                problems.push(Problem::new(
                    "side",
                    format!("{s:?} is not a side: use long or short (or buy/sell)"),
                ));
                None
            }
        },
        Some(Value::Null) | None => None,
        Some(_) => {
            problems.push(Problem::new("side", "must be long or short"));
            None
        }
    }
    .or_else(|| match data.get("direction") {
        Some(Value::String(s)) => parse_side(s),
        _ => None,
    })
    .or_else(|| match data.get("is_short") {
        Some(Value::Bool(true)) => Some("short"),
        Some(Value::Bool(false)) => Some("long"),
        _ => None,
    });
    if let Some(side) = side {
        data.insert("side".into(), Value::String(side.into()));
    }
    // price and the rate of the side of the trade the event is about.
    let rate = if event_type.starts_with("entry") {
        Some("open_rate")
    } else if event_type.starts_with("exit") || event_type == "liquidation" {
        Some("close_rate")
    } else {
        None
    };
    if let Some(rate) = rate {
        match (data.get("price").cloned(), data.get(rate).cloned()) {
            (Some(p), None) if p.is_number() => {
                data.insert(rate.into(), p);
            }
            (None, Some(r)) if r.is_number() => {
                data.insert("price".into(), r);
            }
            _ => {}
        }
    }
    if data.get("profit_abs").is_none()
        && let Some(p) = data.get("profit_amount").filter(|v| v.is_number()).cloned()
    {
        data.insert("profit_abs".into(), p);
    }
    if problems.is_empty() {
        Ok(())
    } else {
        problems.sort_by(|a, b| a.field.cmp(&b.field));
        problems.dedup();
        Err(problems)
    }
}

fn normalize_field(key: &str, value: &mut Value, python: bool, problems: &mut Vec<Problem>) {
    let is = |list: &[&str]| list.contains(&key);
    if let Value::String(s) = value
        && (s == "None" || s.is_empty() && !is(TEXT))
    {
        *value = Value::Null;
        return;
    }
    if is(POSITIVE) || is(SIGNED) {
        let n = match value {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => match number_text(s) {
                Some(Value::Number(n)) => n.as_f64(),
                Some(_) => {
                    problems.push(Problem::new(key, format!("{s:?} is not a finite number")));
                    return;
                }
                None => {
                    problems.push(Problem::new(key, format!("{s:?} is not a number")));
                    return;
                }
            },
            Value::Null => return,
            _ => {
                problems.push(Problem::new(key, "must be a number"));
                return;
            }
        };
        match n {
            Some(n) if !n.is_finite() => {
                problems.push(Problem::new(key, "must be a finite number"));
            }
            Some(n) if is(POSITIVE) && n <= 0.0 => {
                problems.push(Problem::new(
                    key,
                    format!("must be greater than 0, not {n}"),
                ));
            }
            Some(n) => {
                // Keep integers integral ("42" → 42) and floats floating ("1.0" → 1.0).
                if let Value::String(s) = value {
                    *value = number_text(s).unwrap_or_else(|| float_value(n));
                }
            }
            None => problems.push(Problem::new(key, "must be a number")),
        }
        return;
    }
    if is(INTEGERS) {
        if let Value::String(s) = value {
            // Some senders use text ids; those are kept as they are.
            if let Ok(i) = s.trim().parse::<i64>() {
                *value = Value::from(i);
            }
        }
        return;
    }
    if is(BOOLEANS) {
        if let Value::String(s) = value {
            match s.to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" => *value = Value::Bool(true),
                "false" | "0" | "no" => *value = Value::Bool(false),
                _ => problems.push(Problem::new(key, format!("{s:?} is not true or false"))),
            }
        }
        return;
    }
    if key == "date" || key.ends_with("_date") || key == "timestamp" {
        match value {
            Value::String(s) => match datetime_text(s) {
                Some(t) => *value = Value::String(t),
                None => problems.push(Problem::new(key, format!("{s:?} is not a date and time"))),
            },
            Value::Number(_) => match unix_time(value) {
                Some(t) => *value = Value::String(t),
                None => problems.push(Problem::new(key, "is not a Unix time")),
            },
            _ => {}
        }
        return;
    }
    if is(TEXT) {
        return;
    }
    if python && let Value::String(s) = value {
        *value = python_literal(s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pairs_are_read_from_every_common_spelling() {
        for text in [
            "BTCUSDT",
            "BTC-USDT",
            "btc_usdt",
            "BTC/USDT",
            "BINANCE:BTCUSDT.P",
        ] {
            assert_eq!(parse_pair(text).unwrap().pair, "BTC/USDT", "{text}");
        }
        let p = parse_pair("BTC/USDT:USDT").unwrap();
        assert_eq!(
            (p.pair.as_str(), p.perpetual, p.exchange),
            ("BTC/USDT", true, None)
        );
        let p = parse_pair("SOL-PERP").unwrap();
        assert_eq!((p.pair.as_str(), p.perpetual), ("SOL/USD", true));
        assert_eq!(parse_pair("ETHBTC").unwrap().pair, "ETH/BTC");
        assert!(parse_pair("XYZ").is_err());
        assert!(parse_pair("BTC/USDT/X").is_err());
        assert!(parse_pair("").is_err());
    }

    #[test]
    fn python_text_becomes_typed_json() {
        assert_eq!(python_literal("42"), json!(42));
        assert_eq!(python_literal("0.0287"), json!(0.0287));
        assert_eq!(python_literal("1e-05"), json!(1e-05));
        assert_eq!(python_literal("100.0"), json!(100.0));
        assert_eq!(python_literal("None"), Value::Null);
        assert_eq!(python_literal("True"), json!(true));
        assert_eq!(
            python_literal("2024-05-01 12:00:00.123456+00:00"),
            json!("2024-05-01T12:00:00.123456Z")
        );
        assert_eq!(
            python_literal("2024-05-01 12:00:00"),
            json!("2024-05-01T12:00:00Z")
        );
        assert_eq!(python_literal("rsi_cross"), json!("rsi_cross"));
    }

    #[test]
    fn normalization_types_derives_and_validates() {
        let mut data = json!({
            "pair": "ETHUSDT", "direction": "Short", "open_rate": "3000.5", "amount": "0.5",
            "trade_id": "7", "enter_tag": "123", "open_date": "2024-05-01 12:00:00+00:00",
            "custom": "1.5"
        });
        let map = data.as_object_mut().unwrap();
        normalize("entry", map, true).unwrap();
        assert_eq!(
            data,
            json!({
                "pair": "ETH/USDT", "symbol": "ETHUSDT", "base_currency": "ETH",
                "quote_currency": "USDT", "direction": "Short", "side": "short",
                "open_rate": 3000.5, "price": 3000.5, "amount": 0.5, "trade_id": 7,
                "enter_tag": "123", "open_date": "2024-05-01T12:00:00Z", "custom": 1.5
            })
        );
        let mut bad = json!({"open_rate": "-1", "amount": "nan", "side": "up"});
        let problems = normalize("entry", bad.as_object_mut().unwrap(), true).unwrap_err();
        let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields, ["amount", "open_rate", "pair", "side"]);
    }
}
