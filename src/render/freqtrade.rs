//! Freqtrade config import: the `webhook` section of a Freqtrade config, as an endpoint.
//!
//! The section's `url`, `format` (Freqtrade's default is `form`), `retries`, `retry_delay` and
//! `timeout` become the endpoint's settings; its per-type template objects (`entry`,
//! `entry_fill`, …, `status`, and the pre-2022 names `webhookentry`, `webhookentryfill`,
//! `webhookentrycancel`, `webhookexit`, `webhookexitfill`, `webhookexitcancel`,
//! `webhookstatus`) become its templates, and the endpoint subscribes to exactly the types
//! that have one, as Freqtrade sends only those. JSON bodies are written as Python writes
//! them, so the receiver gets the bytes Freqtrade itself would send.
//!
//! ```
//! use tradehook::render::freqtrade::import;
//! let section = serde_json::json!({
//!     "enabled": true,
//!     "url": "https://example.com/hook",
//!     "format": "json",
//!     "webhookentry": {"text": "Buying {pair}"},
//!     "exit_fill": {"text": "Sold {pair}: {profit_ratio:.2%}"},
//! });
//! let imported = import(&section).unwrap();
//! assert_eq!(imported.event_types, ["entry", "exit_fill"]);
//! assert_eq!(imported.url.as_deref(), Some("https://example.com/hook"));
//! ```

use serde_json::{Map, Value};

use super::{BodyFormat, JsonStyle, RenderSpec};

/// Freqtrade's message types, in the order Freqtrade declares them.
const TYPES: &[&str] = &[
    "status",
    "warning",
    "exception",
    "startup",
    "entry",
    "entry_fill",
    "entry_cancel",
    "exit",
    "exit_fill",
    "exit_cancel",
    "protection_trigger",
    "protection_trigger_global",
    "liquidation_warning",
    "strategy_msg",
];

/// The pre-2022 keys, and the types each one serves when the type has no key of its own.
const LEGACY: &[(&str, &[&str])] = &[
    ("webhookentry", &["entry"]),
    ("webhookentrycancel", &["entry_cancel"]),
    ("webhookentryfill", &["entry_fill"]),
    ("webhookexit", &["exit"]),
    ("webhookexitfill", &["exit_fill"]),
    ("webhookexitcancel", &["exit_cancel"]),
    (
        "webhookstatus",
        &["status", "startup", "exception", "warning"],
    ),
];

/// Keys Freqtrade does not know, which people write anyway, and what they meant.
const MISTAKES: &[(&str, &str)] = &[
    ("webhook_entry", "entry"),
    ("webhook_entry_fill", "entry_fill"),
    ("webhook_entry_cancel", "entry_cancel"),
    ("webhook_exit", "exit"),
    ("webhook_exit_fill", "exit_fill"),
    ("webhook_exit_cancel", "exit_cancel"),
    ("webhook_status", "status"),
    ("webhookbuy", "entry"),
    ("webhookbuycancel", "entry_cancel"),
    ("webhookbuyfill", "entry_fill"),
    ("webhooksell", "exit"),
    ("webhooksellcancel", "exit_cancel"),
    ("webhooksellfill", "exit_fill"),
];

/// An endpoint's settings read from a Freqtrade `webhook` section.
#[derive(Debug, Clone, PartialEq)]
pub struct Imported {
    pub url: Option<String>,
    pub render: RenderSpec,
    pub event_types: Vec<String>,
    /// `retries` delays of `retry_delay` seconds.
    pub retry_schedule_ms: Vec<u64>,
    pub timeout_ms: u64,
}

/// Reads a `webhook` section (or a whole Freqtrade config holding one). Each problem comes as
/// (field, message).
pub fn import(section: &Value) -> Result<Imported, Vec<(String, String)>> {
    let section = match section.get("webhook") {
        Some(inner @ Value::Object(_)) => inner,
        _ => section,
    };
    let Some(map) = section.as_object() else {
        return Err(vec![(
            "freqtrade".into(),
            "must be the webhook section of a Freqtrade config (an object)".into(),
        )]);
    };
    let mut problems = Vec::new();
    let field = |k: &str| format!("freqtrade.{k}");
    let url = match map.get("url") {
        Some(Value::String(u)) => Some(u.clone()),
        None => None,
        Some(_) => {
            problems.push((field("url"), "must be a URL".into()));
            None
        }
    };
    let format = match map.get("format").and_then(Value::as_str) {
        None if !map.contains_key("format") => BodyFormat::Form,
        Some("form") => BodyFormat::Form,
        Some("json") => BodyFormat::Json,
        Some("raw") => BodyFormat::Raw,
        _ => {
            problems.push((field("format"), "must be form, json or raw".into()));
            BodyFormat::Form
        }
    };
    let number = |k: &str, default: f64, problems: &mut Vec<(String, String)>| match map.get(k) {
        None => default,
        Some(v) => match v.as_f64() {
            Some(n) if n.is_finite() && n >= 0.0 => n,
            _ => {
                problems.push((field(k), "must be a number of at least 0".into()));
                default
            }
        },
    };
    let retries = number("retries", 0.0, &mut problems);
    let retry_delay = number("retry_delay", 0.1, &mut problems);
    let timeout = number("timeout", 10.0, &mut problems);
    if retries > 50.0 {
        problems.push((field("retries"), "at most 50".into()));
    }
    let custom_messages = map
        .get("allow_custom_messages")
        .and_then(Value::as_bool)
        .unwrap_or(true);

    let mut templates = Map::new();
    for (key, value) in map {
        match key.as_str() {
            "enabled"
            | "url"
            | "format"
            | "retries"
            | "retry_delay"
            | "timeout"
            | "allow_custom_messages" => {}
            k if TYPES.contains(&k) || LEGACY.iter().any(|(l, _)| *l == k) => {
                if !value.is_object() {
                    problems.push((
                        field(k),
                        "must be an object of templates (for the raw format: {\"data\": …})".into(),
                    ));
                }
            }
            k => {
                let hint = MISTAKES
                    .iter()
                    .find(|(wrong, _)| *wrong == k)
                    .map(|(_, right)| format!("; Freqtrade reads this as {right:?}"))
                    .unwrap_or_default();
                problems.push((
                    field(k),
                    format!("Freqtrade has no webhook setting {k:?}, so it would send nothing for it{hint}"),
                ));
            }
        }
    }
    // Explicit type keys win over the legacy ones, as in Freqtrade.
    for t in TYPES {
        if *t == "strategy_msg" && !custom_messages {
            continue;
        }
        let template = map.get(*t).or_else(|| {
            LEGACY
                .iter()
                .find(|(_, types)| types.contains(t))
                .and_then(|(legacy, _)| map.get(*legacy))
        });
        if let Some(template @ Value::Object(_)) = template {
            templates.insert((*t).to_owned(), template.clone());
        }
    }
    if templates.is_empty() && problems.is_empty() {
        problems.push((
            "freqtrade".into(),
            "no message templates (entry, exit_fill, status, …): Freqtrade would send nothing"
                .into(),
        ));
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let delay_ms = ((retry_delay * 1000.0).round() as u64).max(100);
    Ok(Imported {
        url,
        event_types: templates.keys().cloned().collect(),
        render: RenderSpec {
            format: Some(format),
            json_style: if format == BodyFormat::Json {
                JsonStyle::Python
            } else {
                JsonStyle::Compact
            },
            templates: templates.into_iter().collect(),
            ..RenderSpec::default()
        },
        retry_schedule_ms: vec![delay_ms; retries as usize],
        timeout_ms: ((timeout * 1000.0).round() as u64).clamp(100, 120_000),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn legacy_keys_serve_their_types_unless_a_type_key_exists() {
        let imported = import(&json!({"webhook": {
            "url": "https://x/",
            "webhookstatus": {"status": "{status}"},
            "startup": {"status": "started: {status}"},
            "retries": 3, "retry_delay": 0.5, "timeout": 5
        }}))
        .unwrap();
        assert_eq!(
            imported.event_types,
            ["status", "warning", "exception", "startup"]
        );
        assert_eq!(
            imported.render.templates["startup"],
            json!({"status": "started: {status}"})
        );
        assert_eq!(imported.render.format, Some(BodyFormat::Form));
        assert_eq!(imported.retry_schedule_ms, [500, 500, 500]);
        assert_eq!(imported.timeout_ms, 5000);
    }

    #[test]
    fn keys_freqtrade_ignores_are_refused_with_a_hint() {
        let problems = import(&json!({"url": "https://x/", "webhook_entry": {"value": "{pair}"}}))
            .unwrap_err();
        assert_eq!(problems[0].0, "freqtrade.webhook_entry");
        assert!(problems[0].1.contains("\"entry\""), "{}", problems[0].1);
    }
}
