//! Records as both backends keep them, column by column, where the mapping is the same in
//! SQLite and PostgreSQL: each backend only reads and binds the columns.

use super::{Result, StoreError};
use crate::domain::Millis;
use crate::exchange::paper::PaperBook;
use crate::model::{
    Account, Application, ExchangeSettings, Order, OrderStatus, PaperSettings, RiskLimits,
    VenueKind,
};
use crate::security::crypto::Cipher;

/// The columns of an `applications` row, in table order.
pub const APPLICATION_COLUMNS: &str = "id, uid, name, settings, created_at, updated_at";

/// An application's settings column.
pub fn application_settings(a: &Application) -> String {
    serde_json::to_string(&a.settings).unwrap_or_default()
}

/// An application from its columns.
pub fn application(
    id: String,
    uid: Option<String>,
    name: String,
    settings: &str,
    created_at: Millis,
    updated_at: Millis,
) -> Result<Application> {
    let settings = serde_json::from_str(settings)
        .map_err(|e| StoreError::Database(format!("application {id}: bad settings: {e}")))?;
    Ok(Application {
        id,
        uid,
        name,
        settings,
        created_at,
        updated_at,
    })
}

/// The columns of an `accounts` row, in table order, as a literal (see `order_columns`).
macro_rules! account_columns {
    () => {
        "id, name, venue, settings, halted, created_at, updated_at"
    };
}
pub(crate) use account_columns;

/// The columns of an `accounts` row, in table order.
pub const ACCOUNT_COLUMNS: &str = account_columns!();

/// An account's columns.
pub struct AccountRow {
    pub id: String,
    pub name: String,
    pub venue: String,
    /// The venue's settings, JSON.
    pub settings: String,
    /// The kill switch, JSON; null while it is off.
    pub halted: Option<String>,
    pub created_at: Millis,
    pub updated_at: Millis,
}

impl AccountRow {
    /// The row of `a`, its exchange key and secret sealed with `cipher`.
    pub fn of(a: &Account, cipher: &Cipher) -> Self {
        let exchange = a.exchange.clone().map(|e| ExchangeSettings {
            api_key: cipher.seal(&e.api_key),
            api_secret: cipher.seal(&e.api_secret),
            passphrase: e.passphrase.as_deref().map(|p| cipher.seal(p)),
            ..e
        });
        let settings = serde_json::json!({
            "paper": a.paper,
            "exchange": exchange,
            "risk": a.risk,
            "losses_from": a.losses_from,
        })
        .to_string();
        Self {
            id: a.id.clone(),
            name: a.name.clone(),
            venue: a.venue.as_str().to_owned(),
            settings,
            halted: a
                .halted
                .as_ref()
                .map(|h| serde_json::to_string(h).unwrap_or_default()),
            created_at: a.created_at,
            updated_at: a.updated_at,
        }
    }

    /// The account of this row, its exchange key and secret opened with `cipher`.
    pub fn into_account(self, cipher: &Cipher) -> Result<Account> {
        let bad = |what: &str, e: String| {
            StoreError::Database(format!("account {}: bad {what}: {e}", self.id))
        };
        let venue = VenueKind::parse(&self.venue)
            .ok_or_else(|| bad("venue", format!("unknown venue {:?}", self.venue)))?;
        #[derive(serde::Deserialize)]
        struct Settings {
            paper: Option<PaperSettings>,
            #[serde(default)]
            exchange: Option<ExchangeSettings>,
            #[serde(default)]
            risk: RiskLimits,
            #[serde(default)]
            losses_from: Option<Millis>,
        }
        let settings: Settings =
            serde_json::from_str(&self.settings).map_err(|e| bad("settings", e.to_string()))?;
        let halted = self
            .halted
            .as_deref()
            .map(serde_json::from_str)
            .transpose()
            .map_err(|e| bad("halt", e.to_string()))?;
        let exchange = settings
            .exchange
            .map(|e| -> Result<ExchangeSettings> {
                let open = |sealed: &str| {
                    cipher
                        .open(sealed)
                        .map_err(|e| bad("exchange key", e.to_string()))
                };
                Ok(ExchangeSettings {
                    api_key: open(&e.api_key)?,
                    api_secret: open(&e.api_secret)?,
                    passphrase: e.passphrase.as_deref().map(open).transpose()?,
                    ..e
                })
            })
            .transpose()?;
        Ok(Account {
            id: self.id,
            name: self.name,
            venue,
            paper: settings.paper,
            exchange,
            risk: settings.risk,
            losses_from: settings.losses_from,
            halted,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

/// The columns of an `orders` row, in table order, as a literal (for statements built with
/// `concat!`, which PostgreSQL's store prepares once per connection).
macro_rules! order_columns {
    () => {
        "id, client_order_id, account_id, endpoint_id, delivery_id, event_id, request, status, \
         fill, reason, created_at, updated_at"
    };
}
pub(crate) use order_columns;

/// The columns of an `orders` row, in table order.
pub const ORDER_COLUMNS: &str = order_columns!();

/// An order's columns.
pub struct OrderRow {
    pub id: String,
    pub client_order_id: String,
    pub account_id: String,
    pub endpoint_id: String,
    pub delivery_id: String,
    pub event_id: String,
    pub request: Option<String>,
    pub status: String,
    pub fill: Option<String>,
    pub reason: Option<String>,
    pub created_at: Millis,
    pub updated_at: Millis,
}

fn to_json<T: serde::Serialize>(value: &Option<T>) -> Option<String> {
    value
        .as_ref()
        .map(|v| serde_json::to_string(v).unwrap_or_default())
}

impl OrderRow {
    pub fn of(o: &Order) -> Self {
        Self {
            id: o.id.clone(),
            client_order_id: o.client_order_id.clone(),
            account_id: o.account_id.clone(),
            endpoint_id: o.endpoint_id.clone(),
            delivery_id: o.delivery_id.clone(),
            event_id: o.event_id.clone(),
            request: to_json(&o.request),
            status: o.status.as_str().to_owned(),
            fill: to_json(&o.fill),
            reason: to_json(&o.reason),
            created_at: o.created_at,
            updated_at: o.updated_at,
        }
    }

    pub fn into_order(self) -> Result<Order> {
        fn parse<T: serde::de::DeserializeOwned>(
            id: &str,
            what: &str,
            text: Option<String>,
        ) -> Result<Option<T>> {
            text.as_deref()
                .map(serde_json::from_str)
                .transpose()
                .map_err(|e| StoreError::Database(format!("order {id}: bad {what}: {e}")))
        }
        let status = OrderStatus::parse(&self.status).ok_or_else(|| {
            StoreError::Database(format!("order {}: bad status {:?}", self.id, self.status))
        })?;
        Ok(Order {
            request: parse(&self.id, "request", self.request)?,
            fill: parse(&self.id, "fill", self.fill)?,
            reason: parse(&self.id, "reason", self.reason)?,
            status,
            id: self.id,
            client_order_id: self.client_order_id,
            account_id: self.account_id,
            endpoint_id: self.endpoint_id,
            delivery_id: self.delivery_id,
            event_id: self.event_id,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

/// A paper book as it is kept: JSON.
pub fn book_json(book: &PaperBook) -> String {
    serde_json::to_string(book).unwrap_or_default()
}

pub fn book_from_json(account_id: &str, text: &str) -> Result<PaperBook> {
    serde_json::from_str(text)
        .map_err(|e| StoreError::Database(format!("paper book of {account_id}: {e}")))
}
