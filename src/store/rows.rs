//! Records as both backends keep them, column by column, where the mapping is the same in
//! SQLite and PostgreSQL: each backend only reads and binds the columns.

use super::{Result, StoreError};
use crate::domain::Millis;
use crate::model::{Account, PaperSettings, VenueKind};

/// The columns of an `accounts` row, in table order.
pub const ACCOUNT_COLUMNS: &str = "id, name, venue, settings, halted, created_at, updated_at";

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
    pub fn of(a: &Account) -> Self {
        let settings = match a.venue {
            VenueKind::Paper => serde_json::to_string(&a.paper).unwrap_or_default(),
        };
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

    pub fn into_account(self) -> Result<Account> {
        let bad = |what: &str, e: String| {
            StoreError::Database(format!("account {}: bad {what}: {e}", self.id))
        };
        let venue = VenueKind::parse(&self.venue)
            .ok_or_else(|| bad("venue", format!("unknown venue {:?}", self.venue)))?;
        let paper: Option<PaperSettings> = match venue {
            VenueKind::Paper => {
                serde_json::from_str(&self.settings).map_err(|e| bad("settings", e.to_string()))?
            }
        };
        let halted = self
            .halted
            .as_deref()
            .map(serde_json::from_str)
            .transpose()
            .map_err(|e| bad("halt", e.to_string()))?;
        Ok(Account {
            id: self.id,
            name: self.name,
            venue,
            paper,
            halted,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}
