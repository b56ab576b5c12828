//! Labels: what an event is about (`wallet`, `strategy`, `pair`, `source`), and the label
//! filters endpoints subscribe with. One publish reaches every endpoint whose filter its labels
//! pass, whichever application it belongs to.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::domain::FieldError;

/// An event's labels: name → value.
pub type Labels = BTreeMap<String, String>;

/// Labels an event may carry, and names and values each may have.
pub const MAX_LABELS: usize = 20;
const MAX_NAME: usize = 64;
const MAX_VALUE: usize = 256;
/// Values one filter entry may list.
const MAX_VALUES: usize = 1000;

/// What an endpoint wants: for every label named, the event's value is one of those listed.
/// Empty: every event of its types.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(transparent)]
pub struct LabelFilter(pub BTreeMap<String, Values>);

/// One value, or any of several (written as a string or a list of strings).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Values {
    One(String),
    Any(Vec<String>),
}

impl Values {
    fn contains(&self, value: &str) -> bool {
        match self {
            Values::One(v) => v == value,
            Values::Any(vs) => vs.iter().any(|v| v == value),
        }
    }

    fn all(&self) -> &[String] {
        match self {
            Values::One(v) => std::slice::from_ref(v),
            Values::Any(vs) => vs,
        }
    }
}

impl LabelFilter {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether an event with `labels` passes: every label named is there, with a value
    /// listed.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.0
            .iter()
            .all(|(name, values)| labels.get(name).is_some_and(|v| values.contains(v)))
    }

    /// Every problem with the filter, as `labels.<name>` field errors.
    pub fn check(&self, errors: &mut Vec<FieldError>) {
        if self.0.len() > MAX_LABELS {
            errors.push(FieldError::new(
                "labels",
                format!("at most {MAX_LABELS} labels"),
            ));
        }
        for (name, values) in &self.0 {
            if !is_name(name) {
                errors.push(FieldError::new("labels", name_rule()));
            }
            let all = values.all();
            if all.is_empty() || all.len() > MAX_VALUES || all.iter().any(|v| !is_value(v)) {
                errors.push(FieldError::new(
                    format!("labels.{name}"),
                    format!(
                        "a value, or a list of 1 to {MAX_VALUES}, each 1 to {MAX_VALUE} characters"
                    ),
                ));
            }
        }
    }
}

/// Every problem with an event's labels.
pub fn check(labels: &Labels, errors: &mut Vec<FieldError>) {
    if labels.len() > MAX_LABELS {
        errors.push(FieldError::new(
            "labels",
            format!("at most {MAX_LABELS} labels"),
        ));
    }
    for (name, value) in labels {
        if !is_name(name) {
            errors.push(FieldError::new("labels", name_rule()));
        }
        if !is_value(value) {
            errors.push(FieldError::new(
                format!("labels.{name}"),
                format!("1 to {MAX_VALUE} characters"),
            ));
        }
    }
}

fn is_name(name: &str) -> bool {
    (1..=MAX_NAME).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

fn name_rule() -> String {
    format!("label names are 1 to {MAX_NAME} letters, digits, _, - or .")
}

fn is_value(value: &str) -> bool {
    (1..=MAX_VALUE).contains(&value.chars().count())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn every_label_named_must_be_there_with_a_listed_value() {
        let filter: LabelFilter =
            serde_json::from_str(r#"{"wallet": ["W1", "W2"], "pair": "SOL-PERP"}"#).unwrap();
        assert!(filter.matches(&labels(&[
            ("wallet", "W2"),
            ("pair", "SOL-PERP"),
            ("x", "y")
        ])));
        assert!(!filter.matches(&labels(&[("wallet", "W3"), ("pair", "SOL-PERP")])));
        assert!(!filter.matches(&labels(&[("wallet", "W1")])));
        assert!(LabelFilter::default().matches(&Labels::new()));
        // Written back as it was given.
        assert_eq!(
            serde_json::to_string(&filter).unwrap(),
            r#"{"pair":"SOL-PERP","wallet":["W1","W2"]}"#
        );
    }

    #[test]
    fn bad_names_and_values_are_each_reported() {
        let filter: LabelFilter =
            serde_json::from_str(r#"{"bad name": "x", "wallet": [], "ok": ""}"#).unwrap();
        let mut errors = Vec::new();
        filter.check(&mut errors);
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["labels", "labels.ok", "labels.wallet"]);
    }
}
