//! Payload formats: how a body becomes a JSON payload and an event type.
//!
//! `json` is the generic format: any JSON body, its type taken from a `type` field (or
//! `webhook` when there is none).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Rejection;
use crate::domain::EventType;

/// The event type given to a generic JSON payload that names none.
pub const DEFAULT_EVENT_TYPE: &str = "webhook";

/// A source's payload format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    #[default]
    Json,
}

impl Format {
    /// Parses a request body.
    pub fn parse(self, body: &[u8]) -> Result<Value, Rejection> {
        match self {
            Format::Json => serde_json::from_slice(body)
                .map_err(|e| Rejection::MalformedBody(format!("the body is not valid JSON: {e}"))),
        }
    }

    /// The event type of a parsed payload.
    pub fn event_type(self, payload: &Value) -> Result<EventType, Rejection> {
        match self {
            Format::Json => {
                match payload.get("type") {
                    None | Some(Value::Null) => Ok(EventType::parse(DEFAULT_EVENT_TYPE)
                        .expect("the default event type is valid")),
                    Some(Value::String(s)) => EventType::parse(s)
                        .map_err(|e| Rejection::MalformedBody(format!("field \"type\": {e}"))),
                    Some(_) => Err(Rejection::MalformedBody(
                        "field \"type\" must be a string".into(),
                    )),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_takes_its_type_from_the_type_field() {
        let v = Format::Json
            .parse(br#"{"type":"exit_fill","pair":"BTC/USDT"}"#)
            .unwrap();
        assert_eq!(Format::Json.event_type(&v).unwrap().as_str(), "exit_fill");
        let v = Format::Json.parse(br#"{"pair":"BTC/USDT"}"#).unwrap();
        assert_eq!(Format::Json.event_type(&v).unwrap().as_str(), "webhook");
        let v = Format::Json.parse(br#"{"type":7}"#).unwrap();
        assert_eq!(
            Format::Json.event_type(&v).unwrap_err().code(),
            "malformed_body"
        );
        assert_eq!(
            Format::Json.parse(b"{\"type\":").unwrap_err().code(),
            "malformed_body"
        );
    }
}
