//! The service layer: what an operator can do with the hub's records, as plain functions over
//! the store, one module per resource. Each checks its input, applies the product's rules,
//! writes through the store and brings the in-memory registry and the dispatcher up to date.
//!
//! Every edge that acts on records calls these and nothing below them: the HTTP handlers
//! (parse → service → answer), the endpoints declared in the config file, and the coming
//! dashboard. Errors are the layer's own [`Error`]; each edge says them its own way.
//!
//! - [`endpoints`]: create, change, enable and disable, rotate secrets, test, recover, and the
//!   endpoints declared in the config file;
//! - [`sources`]: create, change, delete;
//! - [`tokens`]: create, list, revoke, and the admin token a first start needs;
//! - [`log`]: the event and delivery log, replays and retries by hand;
//! - [`stats`]: how the hub has been doing over a window;
//! - [`accounts`]: trading accounts and their kill switch;
//! - [`applications`]: a provider's customers, their keys and quotas.
//!
//! Every call names the [`Scope`] it acts in.

pub mod accounts;
pub mod applications;
pub mod endpoints;
pub mod log;
pub mod sources;
pub mod stats;
pub mod tokens;

use std::sync::Arc;

use ipnet::IpNet;

use crate::dispatch::DispatchHandle;
use crate::domain::FieldError;
pub use crate::domain::Scope;
use crate::ingest::submit::Ingestor;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::store::{Store, StoreError};

/// What the service layer works with.
#[derive(Clone)]
pub struct Services {
    pub store: Arc<dyn Store>,
    pub registry: Arc<Registry>,
    pub ingestor: Arc<Ingestor>,
    pub dispatch: DispatchHandle,
    pub metrics: Arc<Metrics>,
    /// Places the orders of order destinations, and applies marks to accounts.
    pub orders: Arc<crate::orders::Executor>,
    pub rules: Rules,
}

/// The operator's rules every endpoint must keep, from the hub's settings.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    /// Private networks deliveries may go to (everything private is refused otherwise).
    pub allow_targets: Vec<IpNet>,
    /// Deliveries only over https.
    pub https_only: bool,
}

/// Why an operation was not done. Nothing was changed when one is returned.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The input breaks a rule; one entry per field.
    #[error("{}", FieldError::joined(.0))]
    Invalid(Vec<FieldError>),
    #[error("no {what} with id {id:?}")]
    NotFound { what: &'static str, id: String },
    /// The operation does not fit the record's state; `code` is stable.
    #[error("{detail}")]
    Conflict { code: &'static str, detail: String },
    /// An application's quota does not allow it; `code` is stable.
    #[error("{detail}")]
    OverQuota { code: &'static str, detail: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid(vec![FieldError::new(field, message)])
    }

    pub fn not_found(what: &'static str, id: &str) -> Self {
        Self::NotFound {
            what,
            id: id.to_owned(),
        }
    }

    pub fn conflict(code: &'static str, detail: impl Into<String>) -> Self {
        Self::Conflict {
            code,
            detail: detail.into(),
        }
    }
}

/// Sources and accounts are the operator's: to an application, none exists.
fn operator_only(scope: &Scope, what: &'static str, id: &str) -> Result<()> {
    match scope {
        Scope::Hub => Ok(()),
        Scope::Application(_) => Err(Error::not_found(what, id)),
    }
}

/// `Ok` when no problem was found, else every one of them.
fn checked(errors: Vec<FieldError>) -> Result<()> {
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Error::Invalid(errors))
    }
}

/// A name as sources and accounts have them, which appears in URLs and commands: 1 to 64
/// lowercase letters, digits, `-` and `_`, starting with a letter or digit, and not starting
/// like an id (`src_`, `acc_`), so that a name is never taken for an id.
fn check_name(name: &str, id_prefix: &str, errors: &mut Vec<FieldError>) {
    let ok = (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && !name.starts_with(&format!("{id_prefix}_"));
    if !ok {
        errors.push(FieldError::new(
            "name",
            format!(
                "1 to 64 lowercase letters, digits, - or _, starting with a letter or digit \
                 (not {id_prefix}_)"
            ),
        ));
    }
}

/// Reads an optional nested settings object, and only an object: serde would also read a
/// struct from an array (`[null, null]`), which no client means.
pub fn object<'de, D, T>(d: D) -> std::result::Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    use serde::Deserialize as _;
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::Null => Ok(None),
        value @ serde_json::Value::Object(_) => serde_json::from_value(value)
            .map(Some)
            .map_err(serde::de::Error::custom),
        other => Err(serde::de::Error::custom(format!(
            "expected an object, not {}",
            match other {
                serde_json::Value::Array(_) => "an array",
                serde_json::Value::String(_) => "a string",
                serde_json::Value::Number(_) => "a number",
                _ => "a boolean",
            }
        ))),
    }
}

/// Like [`object`] for a setting that `null` clears: left out is `None`, `null` is
/// `Some(None)`.
pub fn nullable_object<'de, D, T>(d: D) -> std::result::Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    object(d).map(Some)
}
