//! Signal platforms: the request each one takes for an entry or an exit, built from the
//! canonical event's trade fields (pair, side, price, amount), so that a leader's signals
//! drive a follower's 3Commas bot or Cornix channel without a hand-written template.
//!
//! | preset           | body |
//! |------------------|------|
//! | `3commas_signal` | `{secret, max_lag, timestamp, trigger_price, tv_exchange, tv_instrument, action, bot_uuid[, order]}`; `action` is `enter_long`, `exit_long`, `enter_short` or `exit_short` |
//! | `3commas_dca`    | `{message_type: "bot", bot_id, email_token, delay_seconds, pair}` starts a deal; an exit adds `action: "close_at_market_price"`; `pair` is `QUOTE_BASE` |
//! | `cornix`         | Cornix's signal text (pair, exchange, direction, leverage, entry, take-profit and stop targets), as Telegram's `sendMessage` when the endpoint has a `chat_id`, else as text/plain |
//!
//! Every value 3Commas' published examples write as a string is a string here.

use serde_json::{Map, Value, json};

use super::{Context, Preset, RenderSpec, Rendered};

/// The trade an event is about, as the platforms need it.
struct Trade<'a> {
    data: &'a Map<String, Value>,
    pair: &'a str,
    /// The position's side, when the event says it.
    long: Option<bool>,
    opens: bool,
}

impl<'a> Trade<'a> {
    fn of(preset: Preset, event_type: &str, event: &'a Value) -> Result<Self, String> {
        let name = preset.as_str();
        let opens = match event_type {
            "entry" => true,
            "exit" if preset != Preset::Cornix => false,
            other => {
                return Err(format!(
                    "the {name} preset takes {} events, not {other}",
                    preset.platform_types().unwrap_or_default().join(" and ")
                ));
            }
        };
        let data = event
            .get("data")
            .and_then(Value::as_object)
            .ok_or("the event has no data")?;
        let pair = data
            .get("pair")
            .and_then(Value::as_str)
            .ok_or("the event names no pair")?;
        let long = match data.get("side").and_then(Value::as_str) {
            Some("long") => Some(true),
            Some("short") => Some(false),
            _ => None,
        };
        Ok(Trade {
            data,
            pair,
            long,
            opens,
        })
    }

    /// Whether the position is long; the platforms that say the direction need it.
    fn long(&self, preset: Preset) -> Result<bool, String> {
        self.long.ok_or_else(|| {
            format!(
                "{} needs the signal's side (long or short)",
                preset.as_str()
            )
        })
    }

    fn number(&self, field: &str) -> Option<f64> {
        self.data.get(field).and_then(Value::as_f64)
    }

    fn text(&self, field: &str) -> Option<&'a str> {
        self.data.get(field).and_then(Value::as_str)
    }

    /// The pair as `spec` names it on the platform, else `derived`.
    fn named(&self, spec: &RenderSpec, derived: impl FnOnce() -> String) -> String {
        spec.pairs.get(self.pair).cloned().unwrap_or_else(derived)
    }

    /// The pair's base currency (`BTC` of `BTC/USDT`).
    fn base(&self) -> &'a str {
        self.text("base_currency")
            .unwrap_or_else(|| self.pair.split_once('/').map_or(self.pair, |(b, _)| b))
    }

    /// The pair's quote currency (`USDT` of `BTC/USDT`).
    fn quote(&self) -> &'a str {
        self.text("quote_currency")
            .unwrap_or_else(|| self.pair.split_once('/').map_or("", |(_, q)| q))
    }
}

/// A number as the platforms' examples write it: `64000`, `0.0125`.
fn decimal(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        let text = format!("{x:.8}");
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    }
}

/// The request a signal platform takes for `event`; `message` is the text of a Cornix
/// endpoint's own template, when it has one.
pub fn body(
    spec: &RenderSpec,
    preset: Preset,
    event_type: &str,
    event: &Value,
    ctx: &Context<'_>,
    message: Option<String>,
) -> Result<Rendered, String> {
    let trade = Trade::of(preset, event_type, event)?;
    let body = match preset {
        Preset::ThreeCommasSignal => three_commas_signal(spec, &trade, event)?,
        Preset::ThreeCommasDca => three_commas_dca(spec, &trade),
        _ => {
            let text = match message {
                Some(text) => text,
                None => cornix(spec, &trade, ctx)?,
            };
            return Ok(match &spec.chat_id {
                Some(chat) => Rendered {
                    body: json!({"chat_id": chat, "text": text,
                                 "disable_web_page_preview": true})
                    .to_string()
                    .into_bytes(),
                    content_type: "application/json",
                    url: None,
                },
                None => Rendered {
                    body: text.into_bytes(),
                    content_type: "text/plain",
                    url: None,
                },
            });
        }
    };
    Ok(Rendered {
        body: body.to_string().into_bytes(),
        content_type: "application/json",
        url: None,
    })
}

fn three_commas_signal(
    spec: &RenderSpec,
    trade: &Trade<'_>,
    event: &Value,
) -> Result<Value, String> {
    let exchange = spec
        .exchange
        .clone()
        .or_else(|| trade.text("exchange").map(str::to_ascii_uppercase))
        .ok_or(
            "the event names no exchange for tv_exchange: set the endpoint's exchange \
             (BINANCE, BYBIT, …)",
        )?;
    let instrument = trade.named(spec, || {
        let perpetual = trade.data.get("perpetual").and_then(Value::as_bool) == Some(true);
        format!(
            "{}{}{}",
            trade.base(),
            trade.quote(),
            if perpetual { ".P" } else { "" }
        )
    });
    let action = match (trade.opens, trade.long(Preset::ThreeCommasSignal)?) {
        (true, true) => "enter_long",
        (true, false) => "enter_short",
        (false, true) => "exit_long",
        (false, false) => "exit_short",
    };
    let mut body = json!({
        "secret": spec.token.clone().unwrap_or_default(),
        "max_lag": spec.max_lag.unwrap_or(300).to_string(),
        "timestamp": event.get("timestamp").cloned().unwrap_or(Value::Null),
        "trigger_price": trade.number("price").map(decimal).unwrap_or_default(),
        "tv_exchange": exchange,
        "tv_instrument": instrument,
        "action": action,
        "bot_uuid": spec.bot_uuid.clone().unwrap_or_default(),
    });
    if spec.signal_amount {
        let order = match (trade.number("amount"), trade.number("stake_amount")) {
            (Some(amount), _) => Some((amount, "base")),
            (None, Some(stake)) if trade.opens => Some((stake, "quote")),
            _ => None,
        };
        if let Some((amount, unit)) = order {
            body["order"] = json!({"amount": decimal(amount), "currency_type": unit});
        }
    }
    Ok(body)
}

fn three_commas_dca(spec: &RenderSpec, trade: &Trade<'_>) -> Value {
    let bot_id = spec.bot_id.clone().unwrap_or_default();
    let mut body = json!({
        "message_type": "bot",
        "bot_id": bot_id.parse::<u64>().map_or(Value::String(bot_id), Value::from),
        "email_token": spec.token.clone().unwrap_or_default(),
        "delay_seconds": spec.delay_seconds.unwrap_or(0),
        "pair": trade.named(spec, || format!("{}_{}", trade.quote(), trade.base())),
    });
    if !trade.opens {
        body["action"] = json!("close_at_market_price");
    }
    body
}

/// Cornix's free-text signal: a pair, a direction, an entry, and take-profit or stop
/// targets (Cornix reads a signal only with one of them).
fn cornix(spec: &RenderSpec, trade: &Trade<'_>, ctx: &Context<'_>) -> Result<String, String> {
    let long = trade.long(Preset::Cornix)?;
    let entry = trade
        .number("price")
        .ok_or("Cornix needs the signal's entry price")?;
    let away = |percent: f64, up: bool| entry * (1.0 + if up { percent } else { -percent } / 100.0);
    let take_profit = trade
        .number("take_profit")
        .or_else(|| spec.take_profit_percent.map(|p| away(p, long)));
    let stop = trade
        .number("stop_loss")
        .or_else(|| spec.stop_loss_percent.map(|p| away(p, !long)));
    if take_profit.is_none() && stop.is_none() {
        return Err(
            "Cornix reads a signal only with a take-profit or a stop: the signal has neither \
             take_profit nor stop_loss, and the endpoint sets no take_profit_percent or \
             stop_loss_percent"
                .into(),
        );
    }
    let pair = trade.named(spec, || trade.pair.to_owned());
    let mut lines = vec![format!("#{pair}")];
    if let Some(exchange) = &spec.exchange {
        lines.push(format!("Exchange: {exchange}"));
    }
    lines.push(format!(
        "Signal Type: Regular ({})",
        if long { "Long" } else { "Short" }
    ));
    if let Some(leverage) = trade.number("leverage") {
        let mode = match ctx.raw("margin_mode").and_then(Value::as_str) {
            Some("isolated") => "Isolated",
            _ => "Cross",
        };
        lines.push(format!("Leverage: {mode} ({}X)", decimal(leverage)));
    }
    lines.push(String::new());
    lines.push("Entry Targets:".into());
    lines.push(format!("1) {}", decimal(entry)));
    if let Some(tp) = take_profit {
        lines.push(String::new());
        lines.push("Take-Profit Targets:".into());
        lines.push(format!("1) {}", decimal(tp)));
    }
    if let Some(sl) = stop {
        lines.push(String::new());
        lines.push("Stop Targets:".into());
        lines.push(format!("1) {}", decimal(sl)));
    }
    Ok(lines.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_written_as_the_examples_write_them() {
        assert_eq!(decimal(64000.0), "64000");
        assert_eq!(decimal(0.0125), "0.0125");
        assert_eq!(decimal(65280.000000001), "65280");
        assert_eq!(decimal(1.5), "1.5");
    }
}
